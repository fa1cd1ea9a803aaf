/*
 * Workload API internals shared by workload_api.c (calls, attestation,
 * X.509) and workload_jwt.c (JWT-SVIDs, JWT bundles, validation,
 * federated bundles). Not for other modules.
 */
#ifndef SG_AGENT_WORKLOAD_API_INT_H
#define SG_AGENT_WORKLOAD_API_INT_H

#include "agent/workload_api.h"

#include <stdbool.h>

struct sg_workload_api {
    sg_workload_api_deps d;
    size_t pending;
};

typedef enum sg__wl_method {
    M_X509SVID,
    M_X509BUNDLES,
    M_JWTSVID,
    M_JWTBUNDLES,
    M_VALIDATE,
    M_WITSVID,
    M_WITBUNDLES,
} sg__wl_method;

/* One Workload API call from arrival to its end. */
typedef struct sg__wl_call {
    sg_workload_api *api;
    sg_rpc_call *call; /* NULL once the call is over */
    sg__wl_method method;
    int refs; /* the call (until done), the attestation job, JWT mints in flight */
    uv_work_t work;
    sg_peer peer;
    sg_selector_set sels;
    int attest_rc;
    sg_err attest_err;
    sg_cache_sub *sub;
    /* copied from the request: FetchJWTSVID and ValidateJWTSVID */
    char **aud;
    size_t naud;
    char *want_id; /* FetchJWTSVID spiffe_id, NULL when not asked */
    char *token;   /* ValidateJWTSVID svid */
} sg__wl_call;

/* Ends call with an SG_E* code (mapped to a gRPC status) and message. */
void sg__wl_finish(sg_rpc_call *call, int code, const char *msg);

/* Drops one reference; the last one frees w. */
void sg__wl_unref(sg__wl_call *w);

/* Copies the JWT request fields into w. SG_EINVAL (with err) on a bad request. */
int sg__wl_jwt_request(sg__wl_call *w, const ProtobufCMessage *req, sg_err *err);

/* After attestation: FetchJWTSVID (may mint on the thread pool first). */
void sg__wl_jwt_svid(sg__wl_call *w);

/* After attestation: ValidateJWTSVID. */
void sg__wl_validate(sg__wl_call *w);

/* Sends the current JWT bundles of the caller on its FetchJWTBundles stream. */
void sg__wl_send_jwt_bundles(sg__wl_call *w);

/*
 * The foreign X.509 bundles for trust domains tds[0..n) that the agent
 * holds, as Workload API map entries (key "spiffe://td", value DER).
 * *out is malloc'd (free() it and each element pointer array), the bytes
 * borrowed from the cache. Returns the count or a negative SG_E*.
 */
typedef struct sg__wl_fed {
    const char *key;
    const uint8_t *der;
    size_t len;
} sg__wl_fed;
long sg__wl_federated_x509(sg_cache *c, const char *const *tds, size_t n, sg__wl_fed **out);

#endif
