/*
 * The server's federation bundle endpoint (SPIFFE Federation, section 4):
 * HTTPS on its own TCP port, GET / answers the trust domain's SPIFFE
 * bundle JSON. Profile https_spiffe serves with an SVID of the server
 * (renewed at half-life through the identity callback); https_web serves
 * with a certificate and key from files, re-read when they change.
 *
 * Requests are untrusted: the request head is parsed by http-parser with a
 * size cap, every connection has a deadline, and each one runs on its own
 * thread (capped), so a slow or hostile client never blocks the others.
 */
#ifndef SG_SERVER_BUNDLE_ENDPOINT_H
#define SG_SERVER_BUNDLE_ENDPOINT_H

#include "common/err.h"

#include <stdbool.h>
#include <stdint.h>

#define SG_BUNDLE_ENDPOINT_MAX_CONNS   64
#define SG_BUNDLE_ENDPOINT_REQUEST_MAX 8192 /* bytes of one request head */
#define SG_BUNDLE_ENDPOINT_DEADLINE_S  10   /* per connection, handshake included */

typedef struct sg_bundle_endpoint sg_bundle_endpoint;

typedef struct sg_bundle_endpoint_options {
    const char *address;        /* listen address; NULL or "" = 0.0.0.0 */
    int port;                   /* 0 = any free port (see sg_bundle_endpoint_port) */
    bool https_web;             /* false: https_spiffe */
    const char *cert_file_path; /* https_web: PEM chain, leaf first */
    const char *key_file_path;  /* https_web: PEM private key */
    /* The body to serve: SPIFFE bundle JSON (*json malloc'd). Any thread. */
    int (*bundle_json)(void *ctx, char **json, sg_err *err);
    /* https_spiffe: a fresh server SVID (key and chain PEM, malloc'd) and its notAfter. */
    int (*identity)(void *ctx, char **key_pem, char **chain_pem, int64_t *not_after, sg_err *err);
    void *ctx;
} sg_bundle_endpoint_options;

/* Loads the serving identity, binds and starts serving. Options are copied. */
int sg_bundle_endpoint_start(sg_bundle_endpoint **out, const sg_bundle_endpoint_options *o,
                             sg_err *err);

/* The bound TCP port. */
int sg_bundle_endpoint_port(const sg_bundle_endpoint *ep);

/* Stops accepting, waits for open connections (each ends by its deadline) and frees. NULL-safe. */
void sg_bundle_endpoint_stop(sg_bundle_endpoint *ep);

#endif
