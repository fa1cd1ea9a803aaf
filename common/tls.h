/*
 * TLS credentials for the node API, built on gRPC core 1.51.
 *
 * Server: presents its SVID and the trust bundle from memory, requests but
 * does not require a client certificate, and can swap identity and bundle
 * at runtime (new handshakes pick up the change).
 *
 * Agent (client): verifies the server's chain against the bundle and then
 * that the server's certificate carries exactly one URI SAN equal to the
 * expected SPIFFE ID; host names are never checked.
 */
#ifndef SG_COMMON_TLS_H
#define SG_COMMON_TLS_H

#include "common/err.h"

#include <grpc/grpc_security.h>

typedef struct sg_tls_server sg_tls_server;

/*
 * Creates server TLS state from PEM strings (copied): key_pem, chain_pem
 * (leaf first) and bundle_pem (CA certificates that may sign agent SVIDs).
 */
int sg_tls_server_new(sg_tls_server **out, const char *key_pem, const char *chain_pem,
                      const char *bundle_pem, sg_err *err);

/* New server credentials bound to ts (caller releases them with grpc_server_credentials_release).
 */
grpc_server_credentials *sg_tls_server_credentials(sg_tls_server *ts);

/* Replaces identity and bundle; thread-safe; affects new handshakes. */
int sg_tls_server_update(sg_tls_server *ts, const char *key_pem, const char *chain_pem,
                         const char *bundle_pem, sg_err *err);

/* Frees ts after the gRPC server using it has been destroyed. NULL-safe. */
void sg_tls_server_free(sg_tls_server *ts);

/*
 * Channel credentials for an agent. bundle_pem: CA certificates to verify
 * the server with, or NULL for insecure bootstrap (chain not verified; the
 * SPIFFE ID is still checked; caller logs a warning). key_pem/chain_pem:
 * the agent's SVID, or NULL for the attestation channel. expected_id: the
 * server's SPIFFE ID ("spiffe://<td>/spire/server"). Strings are copied.
 * Returns NULL with err set on failure.
 */
grpc_channel_credentials *sg_tls_channel_credentials(const char *bundle_pem, const char *key_pem,
                                                     const char *chain_pem, const char *expected_id,
                                                     sg_err *err);

#endif
