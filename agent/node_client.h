/*
 * The agent's side of the node API: node attestation, agent SVID renewal,
 * entry/bundle sync and batch X509-SVID minting. Every function here is
 * blocking and must run on a worker thread (uv_queue_work), one call at a
 * time per client, except that one JWT-SVID mint may run beside another
 * call; results are plain values the loop thread then owns.
 */
#ifndef SG_AGENT_NODE_CLIENT_H
#define SG_AGENT_NODE_CLIENT_H

#include "common/bundle.h"
#include "common/config.h"
#include "common/err.h"
#include "common/selector.h"
#include "common/x509.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sg_node_client sg_node_client;

/* An entry as the agent sees it. Heap-owned fields (sg_agent_entry_cleanup). */
typedef struct sg_agent_entry {
    char *id;
    char *spiffe_id;
    char *parent_id;
    sg_selector *selectors;
    size_t nselectors;
    int32_t x509_svid_ttl;
    char **dns_names;
    size_t ndns;
    char *hint; /* may be NULL */
    int64_t revision;
    char **federates_with; /* trust domain names, without "spiffe://" */
    size_t nfederates;
    int32_t jwt_svid_ttl; /* seconds, 0 = server default */
} sg_agent_entry;

void sg_agent_entry_cleanup(sg_agent_entry *e);

/* The trust bundle of the agent's trust domain. */
typedef struct sg_agent_bundle {
    sg_der *certs; /* DER CA certificates, malloc'd array */
    size_t n;
    uint64_t sequence;
    sg_jwt_key *jwt; /* JWT signing keys (malloc'd array, each member heap-owned) */
    size_t njwt;
    bool has_jwt; /* jwt[] came from the server in this message (else unknown) */
} sg_agent_bundle;

void sg_agent_bundle_cleanup(sg_agent_bundle *b);

/* Result of one Sync: every entry the agent is authorised for, and the bundle. */
typedef struct sg_sync_result {
    sg_agent_entry *entries;
    size_t nentries;
    sg_agent_bundle bundle;
    int64_t revision;
    char **tainted_ids; /* authority IDs whose SVIDs must be re-minted now */
    size_t ntainted;
    sg_bundle *federated; /* bundles of foreign trust domains the entries federate with */
    size_t nfederated;
    char **tainted_jwt_kids; /* JWT authorities whose tokens must be dropped */
    size_t ntainted_jwt;
} sg_sync_result;

void sg_sync_result_cleanup(sg_sync_result *r);

/* One SVID to mint: the entry and the workload key's DER SubjectPublicKeyInfo (borrowed). */
typedef struct sg_mint_request {
    const char *entry_id;
    const uint8_t *spki;
    size_t spki_len;
} sg_mint_request;

/* One minted SVID, or the server's reason for refusing it. */
typedef struct sg_mint_result {
    int code; /* 0 or SG_E* */
    char error[256];
    sg_der *chain; /* DER certificates, leaf first (malloc'd array) */
    size_t nchain;
    int64_t not_after; /* unix seconds */
    char serial[41];
    char authority_id[81]; /* signing CA (hex SKID); "" from older servers */
} sg_mint_result;

void sg_mint_result_cleanup(sg_mint_result *r);

/*
 * Creates the client from the agent config: reads the trust bundle
 * (trust_bundle_path, unless insecure_bootstrap) and, with KeyManager
 * "disk", the agent key and SVID kept in the key directory. No network.
 */
int sg_node_client_new(sg_node_client **out, const sg_agent_config *cfg, sg_err *err);
void sg_node_client_free(sg_node_client *c);

/*
 * Makes sure the agent holds a valid SVID: keeps a cached one, renews it
 * (RenewAgent, new key) once half its lifetime has passed, or attests with
 * the configured node attestor (join token) when it has none or the server
 * no longer accepts it. Persists key and SVID with KeyManager "disk".
 * join_token overrides the config's token when not NULL.
 */
int sg_node_client_ensure_svid(sg_node_client *c, const char *join_token, sg_err *err);

/* Whether an SVID is held (possibly from disk, possibly not yet confirmed). */
bool sg_node_client_has_svid(sg_node_client *c);

/* The agent's SPIFFE ID (empty string before attestation). Owned by c. */
const char *sg_node_client_agent_id(sg_node_client *c);

/* notAfter of the agent SVID (0 when none). */
int64_t sg_node_client_svid_expiry(sg_node_client *c);

/*
 * Reads the next state from the server's Sync stream, opening it when
 * needed (the first message of a new stream is the full state and is
 * awaited up to the call timeout). Otherwise waits up to wait_ms for the
 * server to push a change. Returns 1 with *out filled, 0 when nothing
 * changed within wait_ms, or a negative SG_E*. A server that ends each
 * stream after one message is polled every few seconds instead.
 */
int sg_node_client_sync(sg_node_client *c, int64_t wait_ms, sg_sync_result *out, sg_err *err);

/*
 * Makes a blocked or later call of this client return soon with
 * SG_ECANCELLED (for a clean stop). Callable from any thread at any time
 * (sg_node_client_mint_jwt may also run beside another call).
 */
void sg_node_client_interrupt(sg_node_client *c);

/*
 * Mints n SVIDs in batches (results[i] answers reqs[i]). Returns an error
 * only when the call itself failed; per-entry refusals are in results.
 * results must have room for n; each is initialised by this call.
 */
int sg_node_client_mint(sg_node_client *c, const sg_mint_request *reqs, size_t n,
                        sg_mint_result *results, sg_err *err);

/* A JWT-SVID minted by the server. Heap-owned fields (sg_node_jwt_svid_cleanup). */
typedef struct sg_node_jwt_svid {
    char *spiffe_id;
    char *token; /* compact JWS; a bearer secret, never logged */
    char *kid;   /* the signing key ("" when the server did not say) */
    int64_t issued_at;
    int64_t expires_at;
} sg_node_jwt_svid;

void sg_node_jwt_svid_cleanup(sg_node_jwt_svid *s);

/*
 * Asks the server for a JWT-SVID for entry_id and aud[0..naud) (naud >= 1,
 * borrowed). Blocking, on a worker. Unlike the other calls it may run
 * while one of them runs on another worker (it uses its own channel, made
 * with the credentials of the last mTLS channel), but never concurrently
 * with itself. SG_EUNAVAIL before the first mTLS channel. Errors:
 * SG_EPERM / SG_ENOENT / SG_EINVAL when the server refused (the message
 * carries its reason), SG_EUNAVAIL (or another transport code) when it
 * could not be reached, SG_EPROTO when its answer was malformed.
 */
int sg_node_client_mint_jwt(sg_node_client *c, const char *entry_id, const char *const *aud,
                            size_t naud, sg_node_jwt_svid *out, sg_err *err);

/* The bundle as last received from the server, or read from trust_bundle_path (deep copy). */
int sg_node_client_bundle(sg_node_client *c, sg_agent_bundle *out, sg_err *err);

#endif
