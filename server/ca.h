/*
 * The signing authority of one trust domain: a self-signed root, or an
 * intermediate under an UpstreamAuthority "disk" key. Signs X509-SVIDs for
 * workloads (from a raw SubjectPublicKeyInfo: the fast path), agent SVIDs
 * (from a CSR) and the server's own SVID. Every function is thread-safe;
 * signing uses an immutable, reference-counted snapshot of the active CA.
 */
#ifndef SG_SERVER_CA_H
#define SG_SERVER_CA_H

#include "common/err.h"
#include "common/key.h"
#include "common/x509.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct sg_ca sg_ca;

typedef struct sg_ca_options {
    const char *trust_domain;    /* required */
    sg_key_type key_type;        /* CA key type */
    int64_t ca_ttl_s;            /* lifetime of the CA certificate */
    const char *subject_country; /* may be NULL */
    const char *subject_org;     /* may be NULL */
    const char *subject_cn;      /* may be NULL */
    const char *keys_dir; /* KeyManager "disk": keep CA key+cert here (0600); NULL = memory */
    const char *upstream_key_file; /* UpstreamAuthority "disk": all NULL when absent */
    const char *upstream_cert_file;
    const char *upstream_bundle_file;
    /* Longest TTL any SVID may get (max of default_x509_svid_ttl and agent_ttl):
     * bounds how long SVIDs of a tainted authority can live. 0 = up to its notAfter. */
    int64_t max_svid_ttl_s;
} sg_ca_options;

/*
 * Loads the CA from keys_dir when a valid, unexpired one is there, or
 * creates it (self-signed, or signed by the upstream key). Validates the
 * upstream files (key matches cert, cert is a CA) with clear errors.
 */
int sg_ca_new(sg_ca **out, const sg_ca_options *opts, sg_err *err);
void sg_ca_free(sg_ca *ca);

/* A signed certificate chain, leaf first (leaf, then the CA when it is an intermediate). */
typedef struct sg_ca_chain {
    sg_der certs[4];
    size_t n;
    int64_t not_after;     /* unix seconds */
    char serial[41];       /* leaf serial, hex */
    char authority_id[81]; /* the signing CA's authority ID (hex SKID) */
} sg_ca_chain;

void sg_ca_chain_cleanup(sg_ca_chain *c);

/* What goes into a leaf SVID. Borrowed for the call. */
typedef struct sg_ca_svid_params {
    const char *spiffe_id;  /* the only URI SAN; must be in the trust domain */
    const char *const *dns; /* DNS SANs; first one is also the subject CN */
    size_t ndns;
    int64_t ttl_s; /* capped to the CA's remaining life */
} sg_ca_svid_params;

/*
 * Signs an X509-SVID for the DER SubjectPublicKeyInfo spki (checked with
 * sg_x509_spki_check, never decoded into an EVP_PKEY). Profile: one URI
 * SAN, critical key usage digitalSignature (+ keyEncipherment for RSA,
 * + keyAgreement for EC), EKU serverAuth+clientAuth, CA:FALSE, SKID/AKID,
 * notBefore backdated 10 s, random 128-bit serial.
 */
int sg_ca_sign_svid(sg_ca *ca, const sg_ca_svid_params *p, const uint8_t *spki, size_t spki_len,
                    sg_ca_chain *out, sg_err *err);

/* The server's own SVID (spiffe://<td>/spire/server) with a fresh key, as PEM strings (malloc'd).
 */
int sg_ca_server_identity(sg_ca *ca, int64_t ttl_s, char **key_pem, char **chain_pem, sg_err *err);

/*
 * The trust bundle: the root(s) agents and workloads must trust (the
 * self-signed CA, or the upstream bundle). certs: malloc'd array of *n DER
 * blobs (free each with sg_der_cleanup, then free the array). Also
 * available as concatenated PEM.
 */
int sg_ca_bundle_der(sg_ca *ca, sg_der **certs, size_t *n, sg_err *err);
int sg_ca_bundle_pem(sg_ca *ca, char **pem, sg_err *err);

/* Bundle sequence number: bumped on every bundle change. */
uint64_t sg_ca_bundle_sequence(sg_ca *ca);

/* notAfter of the active CA certificate (unix seconds): SVID TTLs are capped by it. */
int64_t sg_ca_not_after(sg_ca *ca);

/* ---- rotation: authority slots (prepared -> active -> old) ---- */

/* Lower-case hex of the CA certificate's Subject Key Identifier. */
#define SG_CA_AUTHORITY_ID_MAX 80

typedef enum sg_ca_state { SG_CA_PREPARED, SG_CA_ACTIVE, SG_CA_OLD } sg_ca_state;

typedef struct sg_ca_authority {
    char id[SG_CA_AUTHORITY_ID_MAX + 1];
    char upstream_id[SG_CA_AUTHORITY_ID_MAX + 1]; /* AKID of an intermediate; "" for a root */
    sg_ca_state state;
    int64_t not_before, not_after; /* unix seconds */
    bool tainted;
    int64_t tainted_at; /* unix seconds, 0 unless tainted */
} sg_ca_authority;

/* "prepared", "active", "old". */
const char *sg_ca_state_name(sg_ca_state s);

/* Every authority (active, prepared, old), oldest first. *out: malloc'd, free() it. */
int sg_ca_authorities(sg_ca *ca, sg_ca_authority **out, size_t *n, sg_err *err);

/*
 * The scheduled step at time now: prepares the next authority when the
 * active one has less than min(ca_ttl/2, 30d) left, activates the prepared
 * one below min(ca_ttl/6, 7d) (the active becomes old), and drops old
 * authorities past their notAfter. *bundle_changed (may be NULL) tells
 * whether the bundle, and so its sequence, changed. Persists the slots with
 * KeyManager "disk". Safe to call from any thread; signing never waits on it.
 */
int sg_ca_rotate(sg_ca *ca, int64_t now, bool *bundle_changed, sg_err *err);

/* Forced rotation: creates the prepared authority now (refused when one exists). */
int sg_ca_prepare(sg_ca *ca, int64_t now, sg_ca_authority *out, sg_err *err);
/* Makes the prepared authority id active; the active one becomes old. */
int sg_ca_activate(sg_ca *ca, const char *id, int64_t now, sg_ca_authority *out, sg_err *err);
/* Taints the old authority id (the active or prepared one cannot be tainted). */
int sg_ca_taint(sg_ca *ca, const char *id, int64_t now, sg_ca_authority *out, sg_err *err);
/*
 * Revokes the tainted authority id: it leaves the bundle and is forgotten.
 * Refused while SVIDs it signed may still be live: until the latest of
 * tainted_at + max_svid_ttl_s and the latest notAfter it signed (tracked
 * exactly in this run; across restarts through a high-water mark kept in
 * ca-slots.json with KeyManager "disk", raised before an SVID beyond it is
 * handed out), capped by its notAfter. Without max_svid_ttl_s: its notAfter.
 */
int sg_ca_revoke(sg_ca *ca, const char *id, int64_t now, sg_ca_authority *out, sg_err *err);

/* IDs of tainted authorities (agents re-mint what these signed). Free with sg_ca_ids_free. */
int sg_ca_tainted_ids(sg_ca *ca, char ***ids, size_t *n, sg_err *err);
void sg_ca_ids_free(char **ids, size_t n);

/* ---- UpstreamAuthority "disk": rotation, taint and revoke of its roots ---- */

/*
 * Preparing a new local authority (sg_ca_prepare, or the schedule) reads the
 * upstream key, certificate and bundle files again, so an operator who
 * replaced them (bundle_file_path holding the old and the new root) gets an
 * intermediate signed by the new upstream key without a restart.
 *
 * sg_ca_upstream_taint: skid is the hex Subject Key ID of an upstream root
 * in the bundle. Refused without an UpstreamAuthority, for an unknown root,
 * and while the active or prepared local authority chains to it; otherwise
 * every local authority under it is tainted (agents re-mint what they signed).
 *
 * sg_ca_upstream_revoke: refused until the root is tainted and no SVID signed
 * under it can still be live; then the root leaves the bundle for good (kept
 * in ca-slots.json with KeyManager "disk", so it stays out when the bundle
 * file still lists it after a restart), local authorities under it are
 * dropped and the bundle sequence is bumped.
 */
int sg_ca_upstream_taint(sg_ca *ca, const char *skid, int64_t now, sg_err *err);
int sg_ca_upstream_revoke(sg_ca *ca, const char *skid, int64_t now, sg_err *err);

#endif
