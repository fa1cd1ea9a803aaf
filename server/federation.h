/*
 * Federation with foreign trust domains (SPIFFE Federation, section 5):
 * fetches each relationship's bundle from its bundle endpoint at start and
 * then per the bundle's spiffe_refresh_hint, and stores it through the
 * datastore. https_spiffe endpoints are verified against the stored bundle
 * of that trust domain and must present endpoint_spiffe_id; https_web
 * endpoints are verified with the system roots and the URL's host name.
 * A failed fetch keeps the last good bundle and retries with backoff.
 */
#ifndef SG_SERVER_FEDERATION_H
#define SG_SERVER_FEDERATION_H

#include "common/bundle.h"
#include "common/err.h"
#include "server/authorized.h"
#include "server/bundle_endpoint.h"
#include "server/datastore.h"
#include "server/server.h"

#include <stdint.h>

#define SG_FED_REFRESH_DEFAULT_S 300 /* when a bundle has no refresh hint */
#define SG_FED_REFRESH_MIN_S     1   /* hints are clamped to [min, max] */
#define SG_FED_REFRESH_MAX_S     86400
#define SG_FED_BODY_MAX          (1024 * 1024) /* bytes of one bundle endpoint response */
#define SG_FED_FETCH_TIMEOUT_S   10

typedef struct sg_federation sg_federation;

/*
 * Creates the refresher for server trust domain own_td (copied); ds is
 * borrowed and must outlive it. on_change (may be NULL) is called on the
 * refresher thread after a stored bundle changed.
 */
int sg_federation_new(sg_federation **out, sg_datastore *ds, const char *own_td,
                      void (*on_change)(void *ctx), void *ctx, sg_err *err);

/* Starts the refresher thread. */
int sg_federation_start(sg_federation *f, sg_err *err);

/* Stops and joins the thread (an in-flight fetch ends within its timeout). Idempotent. */
void sg_federation_stop(sg_federation *f);

/* Stops and frees. NULL-safe. */
void sg_federation_free(sg_federation *f);

/* Relationships changed: re-read them and fetch new ones at once. Thread-safe. */
void sg_federation_kick(sg_federation *f);

/*
 * Fetches the bundle of trust_domain's relationship now and stores it
 * (what `federation refresh` does). *out (may be NULL) receives the bundle
 * as stored. Thread-safe.
 */
int sg_federation_refresh(sg_federation *f, const char *trust_domain, sg_bundle *out, sg_err *err);

/*
 * One fetch from rel's bundle endpoint, nothing stored: trust (https_spiffe
 * only) holds the roots that must sign the endpoint's certificate. The
 * response must be 200 with a SPIFFE bundle for rel->trust_domain of at
 * most SG_FED_BODY_MAX bytes. Errors name the URL and what was wrong.
 */
int sg_federation_fetch(const sg_fed_rel *rel, const sg_bundle *trust, sg_bundle *out, sg_err *err);

/* Seconds until the next refresh after a good fetch of b (hint clamped, default when absent). */
int64_t sg_federation_next_refresh_s(const sg_bundle *b);

/* ------------------------------------------------------------ Sync */

/* node.v1 Bundle messages of foreign trust domains; free with sg_fed_node_bundles_cleanup. */
typedef struct sg_fed_node_bundles {
    struct Sigil__Node__V1__Bundle **ptrs; /* SyncResponse.federated_bundles */
    size_t n;
    void *priv;
} sg_fed_node_bundles;

/*
 * The stored bundles of every trust domain that the entries of view
 * federate with, each once, for a Sync response. A trust domain without a stored
 * bundle is skipped (its entries wait for it).
 */
int sg_fed_node_bundles_build(sg_datastore *ds, const sg_authz_view *view, sg_fed_node_bundles *out,
                              sg_err *err);
void sg_fed_node_bundles_cleanup(sg_fed_node_bundles *b);

/* ------------------------------------------------------------ server glue */

/* The refresher of s (implemented in server.c); NULL before setup. */
sg_federation *sg_server_federation(sg_server *s);

/*
 * Creates the refresher for s and writes the config's federates_with
 * relationships to the datastore (created, or updated when they differ).
 * Bundle changes mark every Sync stream for a push.
 */
int sg_federation_server_setup(sg_federation **out, sg_server *s, sg_err *err);

/* Starts the refresher and, when configured, the bundle endpoint (*ep, else NULL). */
int sg_federation_server_start(sg_federation *f, sg_server *s, sg_bundle_endpoint **ep,
                               sg_err *err);

/* The server's own bundle (X.509 authorities and JWT keys) as SPIFFE bundle JSON. */
int sg_federation_local_bundle_json(sg_server *s, char **json, sg_err *err);

/*
 * Normalises a trust domain given as "td" or "spiffe://td" into out
 * (SG_TRUST_DOMAIN_MAX + 1 bytes) and refuses own_td. what names the field.
 */
int sg_federation_foreign_td(const char *what, const char *in, const char *own_td, char *out,
                             sg_err *err);

#endif
