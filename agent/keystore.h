/*
 * The agent's own identity on disk: its private key, its SVID chain and
 * the trust bundle last received from the server, kept in one directory
 * for KeyManager "disk" (agent_svid.key 0600, agent_svid.pem, bundle.pem,
 * each written atomically). With KeyManager "memory" nothing is stored:
 * saves succeed without writing and loads find nothing.
 *
 * Not thread-safe: one caller at a time per keystore (the node client).
 */
#ifndef SG_AGENT_KEYSTORE_H
#define SG_AGENT_KEYSTORE_H

#include "common/err.h"
#include "common/spiffeid.h"
#include "common/x509.h"

#include <openssl/evp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SG_KEYSTORE_KEY_FILE    "agent_svid.key"
#define SG_KEYSTORE_SVID_FILE   "agent_svid.pem"
#define SG_KEYSTORE_BUNDLE_FILE "bundle.pem"

/* Caller storage; init with sg_keystore_init. */
typedef struct sg_keystore {
    char *dir; /* NULL for KeyManager "memory" (read-only after init) */
} sg_keystore;

/*
 * Prepares a keystore over dir (copied; created 0700 if missing), or a
 * memory-only keystore when dir is NULL.
 */
int sg_keystore_init(sg_keystore *ks, const char *dir, sg_err *err);

/* Frees what init allocated. NULL-safe. */
void sg_keystore_cleanup(sg_keystore *ks);

/* Whether ks writes to disk. */
bool sg_keystore_on_disk(const sg_keystore *ks);

/* An agent SVID with its key. Every field is owned by the struct. */
typedef struct sg_keystore_svid {
    EVP_PKEY *key;
    sg_der *chain; /* DER certificates, leaf first (malloc'd array) */
    size_t nchain;
    char spiffe_id[SG_SPIFFEID_MAX + 1];
    int64_t not_before; /* unix seconds */
    int64_t not_after;  /* unix seconds */
} sg_keystore_svid;

/* Frees key and chain and zeroes s. NULL-safe. */
void sg_keystore_svid_cleanup(sg_keystore_svid *s);

/*
 * Fills out from key and DER chain (both borrowed; copied or
 * reference-counted): parses the leaf, checks that it holds exactly one
 * SPIFFE ID and that key matches its public key. Errors say what is wrong.
 */
int sg_keystore_svid_make(EVP_PKEY *key, const sg_der *chain, size_t nchain, sg_keystore_svid *out,
                          sg_err *err);

/*
 * Loads the stored SVID. Returns SG_ENOENT when there is none (always for
 * memory), and also when the stored one is expired at now (unix seconds;
 * 0 = current time), unparsable or does not match its key: those are
 * logged as warnings and ignored, so the agent attests again.
 */
int sg_keystore_load_svid(const sg_keystore *ks, int64_t now, sg_keystore_svid *out, sg_err *err);

/* Stores svid's key (0600) and chain (PEM). No-op for memory. */
int sg_keystore_save_svid(const sg_keystore *ks, const sg_keystore_svid *svid, sg_err *err);

/* Removes a stored SVID and key (an evicted identity). Missing files are fine. */
int sg_keystore_remove_svid(const sg_keystore *ks, sg_err *err);

/*
 * Loads bundle.pem into *certs (malloc'd array of n DER certificates; free
 * each with sg_der_cleanup and the array with free). SG_ENOENT when none.
 */
int sg_keystore_load_bundle(const sg_keystore *ks, sg_der **certs, size_t *n, sg_err *err);

/* Stores certs[0..n) as bundle.pem. No-op for memory. */
int sg_keystore_save_bundle(const sg_keystore *ks, const sg_der *certs, size_t n, sg_err *err);

#endif
