/*
 * The signing authority of one trust domain.
 *
 * The CA certificate itself (self-signed root, or intermediate under an
 * upstream "disk" key) is built with the OpenSSL X509 API: it happens once.
 * Leaf X509-SVIDs are the hot path. Each is written directly as DER from a
 * per-snapshot template (issuer name, AKID, signature algorithm and the
 * constant extensions are encoded once), with the caller's
 * SubjectPublicKeyInfo copied in verbatim after sg_x509_spki_check. The TBS
 * is hashed with a one-shot digest and signed with an EVP_PKEY_CTX taken
 * from a small pool, so no OpenSSL encoder/decoder or fetch runs per SVID
 * (bench/bench_sign.c measures this against the X509 API paths).
 */
#include "server/ca.h"
#include "server/slots.h"

#include "common/fsutil.h"
#include "common/log.h"
#include "common/spiffeid.h"

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CA_DEFAULT_TTL_S  (24 * 3600)
#define LEAF_BACKDATE_S   10
#define CTX_POOL_MAX      32
#define SVID_MAX_DNS      100
#define DNS_NAME_MAX      253
#define CN_MAX            64 /* X.520 ub-common-name */
#define UPSTREAM_FILE_MAX (1024 * 1024)

/* ---- constant DER fragments ---- */

static const uint8_t DER_BC_LEAF[] = {0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13,
                                      0x01, 0x01, 0xff, 0x04, 0x02, 0x30, 0x00};
/* keyUsage critical: digitalSignature + keyAgreement (EC) / + keyEncipherment (RSA). */
static const uint8_t DER_KU_EC[] = {0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01,
                                    0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x03, 0x88};
static const uint8_t DER_KU_RSA[] = {0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01,
                                     0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x05, 0xa0};
/* extKeyUsage: serverAuth, clientAuth. */
static const uint8_t DER_EKU[] = {0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d, 0x25, 0x04, 0x16, 0x30, 0x14,
                                  0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01, 0x06,
                                  0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02};
static const uint8_t DER_SKID_HDR[] = {0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d,
                                       0x0e, 0x04, 0x16, 0x04, 0x14};
static const uint8_t DER_SAN_OID[] = {0x06, 0x03, 0x55, 0x1d, 0x11};
/* Subject C=US, O=SPIRE (the RDNs SPIRE puts in every X509-SVID). */
static const uint8_t DER_SUBJ_C_O[] = {0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x06, 0x13,
                                       0x02, 'U',  'S',  0x31, 0x0e, 0x30, 0x0c, 0x06, 0x03, 0x55,
                                       0x04, 0x0a, 0x0c, 0x05, 'S',  'P',  'I',  'R',  'E'};
static const uint8_t DER_CN_OID[] = {0x06, 0x03, 0x55, 0x04, 0x03};
static const uint8_t DER_ALG_ECDSA_SHA256[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86,
                                               0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
static const uint8_t DER_ALG_ECDSA_SHA384[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86,
                                               0x48, 0xce, 0x3d, 0x04, 0x03, 0x03};
static const uint8_t DER_ALG_RSA_SHA256[] = {0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                             0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00};
static const uint8_t OID_RSA_ENC[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01};

/* ---- the immutable snapshot of the active CA ---- */

typedef struct ca_snapshot {
    atomic_int refs;
    /* The latest notAfter of what it signed: revoke waits for long per-entry
     * TTLs too, across restarts with KeyManager "disk" (prior -1: a state
     * file without the mark). */
    sg_slot_mark mark;
    /* Its slot's details; root_id changes only under rot_mu. */
    char upstream_id[SG_CA_AUTHORITY_ID_MAX + 1]; /* AKID of an intermediate; "" for a root */
    char root_id[SG_CA_AUTHORITY_ID_MAX + 1];     /* upstream root it chains to; "" unknown/none */
    X509 *cert;
    EVP_PKEY *key;
    int64_t not_after;
    uint8_t *issuer_der; /* DER Name of the CA subject = leaf issuer */
    size_t issuer_len;
    uint8_t akid[64]; /* pre-encoded authorityKeyIdentifier extension */
    size_t akid_len;
    const uint8_t *sigalg; /* DER AlgorithmIdentifier of leaf signatures */
    size_t sigalg_len;
    int digest_nid;                                /* NID_sha256 / NID_sha384 */
    char authority_id[SG_CA_AUTHORITY_ID_MAX + 1]; /* of cert, for agents' taint checks */
    sg_der tail[3]; /* appended after the leaf: an intermediate CA, then upstream intermediates */
    size_t ntail;
    pthread_mutex_t pool_mu; /* guards pool only; everything else is read-only */
    EVP_PKEY_CTX *pool[CTX_POOL_MAX];
    int npool;
} ca_snapshot;

/* Upstream material loaded from the operator's files. */
typedef struct upstream {
    EVP_PKEY *key;
    STACK_OF(X509) * certs;  /* certs[0] signs our CA; the rest is its chain */
    STACK_OF(X509) * bundle; /* roots to publish */
} upstream;

/* One authority is a slot whose object is its snapshot (certificate and key). */
typedef sg_slot slot;
#define SNAP(sl) ((ca_snapshot *)(sl)->obj)

/* An upstream root the operator tainted or revoked. */
typedef struct uproot {
    char id[SG_CA_AUTHORITY_ID_MAX + 1];
    int64_t tainted_at;
    bool revoked; /* out of the bundle for good */
} uproot;

#define UPROOTS_MAX 32

struct sg_ca {
    pthread_mutex_t mu;       /* guards active, slots, ups, bundle and bundle_seq */
    pthread_mutex_t rot_mu;   /* serialises rotation steps and the files in keys_dir */
    pthread_mutex_t state_mu; /* serialises writes of the state file (taken before mu) */
    ca_snapshot *active;      /* a reference of its own to the active slot's snapshot */
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_der *bundle; /* trust bundle roots */
    size_t nbundle;
    uint64_t bundle_seq;
    sg_slots slots; /* oldest first; obj: ca_snapshot */
    /* Configuration (strings owned) and upstream material. */
    sg_ca_options o;
    bool have_upstream;
    upstream u;
    char *up_key, *up_cert, *up_bundle; /* the upstream files, read again on prepare */
    uint64_t up_stamp; /* of the upstream files when last read (inode, size, mtime) */
    uproot ups[UPROOTS_MAX];
    size_t nups;
    STACK_OF(X509) * extra;                     /* upstream certificates carried in SVID chains */
    char legacy_id[SG_CA_AUTHORITY_ID_MAX + 1]; /* authority last written as ca.key/ca.crt */
    int64_t warned_at;                          /* last "cannot outlive" warning */
};

static void snap_free(ca_snapshot *s)
{
    if (s == NULL)
        return;
    for (int i = 0; i < s->npool; i++)
        EVP_PKEY_CTX_free(s->pool[i]);
    for (size_t i = 0; i < s->ntail; i++)
        sg_der_cleanup(&s->tail[i]);
    pthread_mutex_destroy(&s->pool_mu);
    OPENSSL_free(s->issuer_der);
    X509_free(s->cert);
    EVP_PKEY_free(s->key);
    free(s);
}

static ca_snapshot *snap_acquire(sg_ca *ca)
{
    ca_snapshot *s;

    pthread_mutex_lock(&ca->mu);
    s = ca->active;
    atomic_fetch_add(&s->refs, 1);
    pthread_mutex_unlock(&ca->mu);
    return s;
}

static void snap_release(void *obj)
{
    ca_snapshot *s = obj;

    if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1)
        snap_free(s);
}

/* A signing context for the snapshot's key, from the pool or new. */
static EVP_PKEY_CTX *snap_ctx_get(ca_snapshot *s)
{
    EVP_PKEY_CTX *c = NULL;
    const EVP_MD *md;

    pthread_mutex_lock(&s->pool_mu);
    if (s->npool > 0)
        c = s->pool[--s->npool];
    pthread_mutex_unlock(&s->pool_mu);
    if (c != NULL)
        return c;
    md = s->digest_nid == NID_sha384 ? EVP_sha384() : EVP_sha256();
    c = EVP_PKEY_CTX_new_from_pkey(NULL, s->key, NULL);
    if (c == NULL || EVP_PKEY_sign_init(c) <= 0 || EVP_PKEY_CTX_set_signature_md(c, md) <= 0 ||
        (EVP_PKEY_is_a(s->key, "RSA") && EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) <= 0)) {
        EVP_PKEY_CTX_free(c);
        return NULL;
    }
    return c;
}

static void snap_ctx_put(ca_snapshot *s, EVP_PKEY_CTX *c)
{
    pthread_mutex_lock(&s->pool_mu);
    if (s->npool < CTX_POOL_MAX) {
        s->pool[s->npool++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&s->pool_mu);
    EVP_PKEY_CTX_free(c);
}

/* Builds a snapshot around cert+key (both taken) and the chain tail. */
static void authority_id(X509 *c, char *out, size_t len);

static int snap_new(X509 *cert, EVP_PKEY *key, bool intermediate, STACK_OF(X509) * extra,
                    ca_snapshot **out, sg_err *err)
{
    ca_snapshot *s = calloc(1, sizeof *s);
    const ASN1_OCTET_STRING *skid;
    int n, rc;

    if (s == NULL) {
        X509_free(cert);
        EVP_PKEY_free(key);
        return sg_err_set(err, SG_ENOMEM, "out of memory creating CA snapshot");
    }
    atomic_init(&s->refs, 1);
    authority_id(cert, s->authority_id, sizeof s->authority_id);
    pthread_mutex_init(&s->pool_mu, NULL);
    s->cert = cert;
    s->key = key;
    s->not_after = sg_x509_not_after(cert);
    n = i2d_X509_NAME(X509_get_subject_name(cert), &s->issuer_der);
    if (n <= 0) {
        rc = sg_err_ssl(err, "encoding CA subject");
        goto fail;
    }
    s->issuer_len = (size_t)n;
    skid = X509_get0_subject_key_id(cert);
    if (skid != NULL && ASN1_STRING_length(skid) > 0 && ASN1_STRING_length(skid) <= 40) {
        size_t kl = (size_t)ASN1_STRING_length(skid);
        uint8_t *a = s->akid;
        /* Extension{ OID 2.5.29.35, OCTET STRING{ SEQ{ [0] keyid } } } */
        *a++ = 0x30;
        *a++ = (uint8_t)(kl + 11);
        *a++ = 0x06;
        *a++ = 0x03;
        *a++ = 0x55;
        *a++ = 0x1d;
        *a++ = 0x23;
        *a++ = 0x04;
        *a++ = (uint8_t)(kl + 4);
        *a++ = 0x30;
        *a++ = (uint8_t)(kl + 2);
        *a++ = 0x80;
        *a++ = (uint8_t)kl;
        memcpy(a, ASN1_STRING_get0_data(skid), kl);
        s->akid_len = kl + 13;
    }
    if (EVP_PKEY_is_a(key, "RSA")) {
        s->sigalg = DER_ALG_RSA_SHA256;
        s->sigalg_len = sizeof DER_ALG_RSA_SHA256;
        s->digest_nid = NID_sha256;
    } else if (EVP_PKEY_is_a(key, "EC") && EVP_PKEY_get_bits(key) == 256) {
        s->sigalg = DER_ALG_ECDSA_SHA256;
        s->sigalg_len = sizeof DER_ALG_ECDSA_SHA256;
        s->digest_nid = NID_sha256;
    } else if (EVP_PKEY_is_a(key, "EC") && EVP_PKEY_get_bits(key) == 384) {
        s->sigalg = DER_ALG_ECDSA_SHA384;
        s->sigalg_len = sizeof DER_ALG_ECDSA_SHA384;
        s->digest_nid = NID_sha384;
    } else {
        rc = sg_err_set(err, SG_EUNSUPPORTED, "CA key type is not supported for signing");
        goto fail;
    }
    if (intermediate) {
        rc = sg_x509_to_der(cert, &s->tail[0], err);
        if (rc < 0)
            goto fail;
        s->ntail = 1;
    }
    for (int i = 0; extra != NULL && i < sk_X509_num(extra) && s->ntail < 3; i++) {
        rc = sg_x509_to_der(sk_X509_value(extra, i), &s->tail[s->ntail], err);
        if (rc < 0)
            goto fail;
        s->ntail++;
    }
    *out = s;
    return 0;
fail:
    snap_free(s);
    return rc;
}

/* ---- DER writer for leaf certificates ---- */

typedef struct dbuf {
    uint8_t *b;
    size_t len, cap;
    bool bad; /* set when a write would overflow cap */
} dbuf;

static size_t der_hdr(uint8_t *h, uint8_t tag, size_t n)
{
    size_t i = 0;

    h[i++] = tag;
    if (n < 0x80) {
        h[i++] = (uint8_t)n;
    } else if (n < 0x100) {
        h[i++] = 0x81;
        h[i++] = (uint8_t)n;
    } else if (n < 0x10000) {
        h[i++] = 0x82;
        h[i++] = (uint8_t)(n >> 8);
        h[i++] = (uint8_t)n;
    } else {
        h[i++] = 0x83;
        h[i++] = (uint8_t)(n >> 16);
        h[i++] = (uint8_t)(n >> 8);
        h[i++] = (uint8_t)n;
    }
    return i;
}

static void put(dbuf *d, const void *p, size_t n)
{
    if (d->bad || d->cap - d->len < n) {
        d->bad = true;
        return;
    }
    memcpy(d->b + d->len, p, n);
    d->len += n;
}

static void put_tlv(dbuf *d, uint8_t tag, const void *p, size_t n)
{
    uint8_t h[5];
    put(d, h, der_hdr(h, tag, n));
    put(d, p, n);
}

/* Turns everything written since start into the content of one TLV. */
static void wrap(dbuf *d, size_t start, uint8_t tag)
{
    uint8_t h[5];
    size_t clen = d->len - start, hl = der_hdr(h, tag, clen);

    if (d->bad || d->cap - d->len < hl) {
        d->bad = true;
        return;
    }
    memmove(d->b + start + hl, d->b + start, clen);
    memcpy(d->b + start, h, hl);
    d->len += hl;
}

static void put_time(dbuf *d, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    char s[20];
    int n;

    gmtime_r(&tt, &tm);
    if (tm.tm_year >= 50 && tm.tm_year < 150) { /* RFC 5280 4.1.2.5: UTCTime through 2049 */
        n = snprintf(s, sizeof s, "%02d%02d%02d%02d%02d%02dZ", tm.tm_year % 100, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        put_tlv(d, 0x17, s, (size_t)n);
    } else {
        n = snprintf(s, sizeof s, "%04d%02d%02d%02d%02d%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        put_tlv(d, 0x18, s, (size_t)n);
    }
}

/* Reads one TLV header of already-checked DER; returns content and moves *p past it. */
static const uint8_t *der_next(const uint8_t **p, size_t *clen)
{
    const uint8_t *s = *p + 1;
    size_t n = *s++;

    if (n & 0x80) {
        size_t nb = n & 0x7f;
        n = 0;
        while (nb-- > 0)
            n = (n << 8) | *s++;
    }
    *clen = n;
    *p = s + n;
    return s;
}

static bool dns_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > DNS_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_' || c == '*'))
            return false;
    }
    return true;
}

/* ---- leaf signing ---- */

static int sign_leaf(ca_snapshot *s, const char *td, const sg_ca_svid_params *p,
                     const uint8_t *spki, size_t spki_len, sg_ca_chain *out, sg_err *err)
{
    static const char hex[] = "0123456789abcdef";
    sg_spiffeid id;
    uint8_t serial[17], skid[SHA_DIGEST_LENGTH], md[SHA384_DIGEST_LENGTH], sig[1024];
    const uint8_t *q, *alg, *oid, *bits;
    size_t alg_len, oid_len, bits_len, mdlen, siglen = sizeof sig, uri_len, cap, s0, s1, s2, s3;
    int64_t now, nb, na;
    bool rsa;
    dbuf d = {0};
    EVP_PKEY_CTX *pc;
    int rc;

    if (p == NULL || p->spiffe_id == NULL)
        return sg_err_set(err, SG_EINVAL, "SVID parameters lack a SPIFFE ID");
    rc = sg_spiffeid_parse(p->spiffe_id, &id, err);
    if (rc < 0)
        return rc;
    if (!sg_spiffeid_member_of(&id, td))
        return sg_err_set(err, SG_EINVAL, "SPIFFE ID \"%.200s\" is not in trust domain \"%s\"",
                          p->spiffe_id, td);
    if (id.path[0] == '\0')
        return sg_err_set(err, SG_EINVAL,
                          "SPIFFE ID \"%.200s\" has no path (a workload ID needs one)",
                          p->spiffe_id);
    if (p->ttl_s <= 0)
        return sg_err_set(err, SG_EINVAL, "SVID TTL %lld is not positive", (long long)p->ttl_s);
    if (p->ndns > SVID_MAX_DNS)
        return sg_err_set(err, SG_EINVAL, "%zu DNS names (limit %d)", p->ndns, SVID_MAX_DNS);
    uri_len = strlen(p->spiffe_id);
    cap = 2048 + s->issuer_len + s->akid_len + spki_len + uri_len;
    for (size_t i = 0; i < p->ndns; i++) {
        if (p->dns[i] == NULL || !dns_name_ok(p->dns[i]))
            return sg_err_set(err, SG_EINVAL, "DNS name \"%.100s\" is not valid",
                              p->dns[i] ? p->dns[i] : "(null)");
        cap += 2 * strlen(p->dns[i]) + 16;
    }
    rc = sg_x509_spki_check(spki, spki_len, err);
    if (rc < 0)
        return rc;

    /* Locate the algorithm OID and the key bits (the DER is already checked). */
    q = spki;
    q = der_next(&q, &alg_len); /* inside SubjectPublicKeyInfo */
    alg = der_next(&q, &alg_len);
    bits = der_next(&q, &bits_len);
    oid = der_next(&alg, &oid_len);
    rsa = oid_len == sizeof OID_RSA_ENC && memcmp(oid, OID_RSA_ENC, oid_len) == 0;
    SHA1(bits + 1, bits_len - 1, skid); /* RFC 5280 4.2.1.2 method (1) */

    now = (int64_t)time(NULL);
    nb = now - LEAF_BACKDATE_S;
    na = now + p->ttl_s;
    if (na > s->not_after)
        na = s->not_after;
    if (na <= now)
        return sg_err_set(err, SG_EEXPIRED, "the CA certificate has expired");

    if (RAND_bytes(serial + 1, 16) != 1)
        return sg_err_ssl(err, "generating a serial number");
    serial[0] = 0x00;
    serial[1] |= 0x80; /* 128-bit magnitude, positive with the leading zero */

    d.b = malloc(cap);
    d.cap = cap;
    if (d.b == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory signing SVID");

    /* TBSCertificate */
    put(&d, "\xa0\x03\x02\x01\x02", 5);
    put_tlv(&d, 0x02, serial, sizeof serial);
    put(&d, s->sigalg, s->sigalg_len);
    put(&d, s->issuer_der, s->issuer_len);
    s0 = d.len;
    put_time(&d, nb);
    put_time(&d, na);
    wrap(&d, s0, 0x30);
    s0 = d.len;
    put(&d, DER_SUBJ_C_O, sizeof DER_SUBJ_C_O);
    if (p->ndns > 0 && strlen(p->dns[0]) <= CN_MAX) {
        s1 = d.len;
        put(&d, DER_CN_OID, sizeof DER_CN_OID);
        put_tlv(&d, 0x0c, p->dns[0], strlen(p->dns[0]));
        wrap(&d, s1, 0x30);
        wrap(&d, s1, 0x31);
    }
    wrap(&d, s0, 0x30);
    put(&d, spki, spki_len);
    s0 = d.len;
    put(&d, rsa ? DER_KU_RSA : DER_KU_EC, sizeof DER_KU_EC);
    put(&d, DER_EKU, sizeof DER_EKU);
    put(&d, DER_BC_LEAF, sizeof DER_BC_LEAF);
    put(&d, DER_SKID_HDR, sizeof DER_SKID_HDR);
    put(&d, skid, sizeof skid);
    put(&d, s->akid, s->akid_len);
    s1 = d.len;
    put(&d, DER_SAN_OID, sizeof DER_SAN_OID);
    s2 = d.len;
    s3 = d.len;
    put_tlv(&d, 0x86, p->spiffe_id, uri_len);
    for (size_t i = 0; i < p->ndns; i++)
        put_tlv(&d, 0x82, p->dns[i], strlen(p->dns[i]));
    wrap(&d, s3, 0x30);
    wrap(&d, s2, 0x04);
    wrap(&d, s1, 0x30);
    wrap(&d, s0, 0x30);
    wrap(&d, s0, 0xa3);
    wrap(&d, 0, 0x30);
    if (d.bad) {
        rc = sg_err_set(err, SG_EINVAL, "SVID does not fit its buffer");
        goto fail;
    }

    /* Signature over the TBS. */
    if (s->digest_nid == NID_sha384) {
        SHA384(d.b, d.len, md);
        mdlen = SHA384_DIGEST_LENGTH;
    } else {
        SHA256(d.b, d.len, md);
        mdlen = SHA256_DIGEST_LENGTH;
    }
    pc = snap_ctx_get(s);
    if (pc == NULL) {
        rc = sg_err_ssl(err, "setting up the CA signing context");
        goto fail;
    }
    if (EVP_PKEY_sign(pc, sig, &siglen, md, mdlen) <= 0) {
        EVP_PKEY_CTX_free(pc);
        rc = sg_err_ssl(err, "signing SVID");
        goto fail;
    }
    snap_ctx_put(s, pc);
    put(&d, s->sigalg, s->sigalg_len);
    s0 = d.len;
    put(&d, "", 1); /* no unused bits */
    put(&d, sig, siglen);
    wrap(&d, s0, 0x03);
    wrap(&d, 0, 0x30);
    if (d.bad) {
        rc = sg_err_set(err, SG_EINVAL, "SVID does not fit its buffer");
        goto fail;
    }

    memset(out, 0, sizeof *out);
    out->certs[0].data = d.b;
    out->certs[0].len = d.len;
    out->n = 1;
    for (size_t i = 0; i < s->ntail; i++) {
        uint8_t *c = malloc(s->tail[i].len);
        if (c == NULL) {
            sg_ca_chain_cleanup(out);
            return sg_err_set(err, SG_ENOMEM, "out of memory copying the CA chain");
        }
        memcpy(c, s->tail[i].data, s->tail[i].len);
        out->certs[out->n].data = c;
        out->certs[out->n].len = s->tail[i].len;
        out->n++;
    }
    out->not_after = na;
    for (size_t i = 0; i < 16; i++) {
        out->serial[2 * i] = hex[serial[i + 1] >> 4];
        out->serial[2 * i + 1] = hex[serial[i + 1] & 15];
    }
    out->serial[32] = '\0';
    return 0;
fail:
    free(d.b);
    return rc;
}

void sg_ca_chain_cleanup(sg_ca_chain *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n && i < 4; i++)
        sg_der_cleanup(&c->certs[i]);
    c->n = 0;
}

int sg_ca_sign_svid(sg_ca *ca, const sg_ca_svid_params *p, const uint8_t *spki, size_t spki_len,
                    sg_ca_chain *out, sg_err *err)
{
    ca_snapshot *s = snap_acquire(ca);
    int rc = sign_leaf(s, ca->td, p, spki, spki_len, out, err);

    if (rc == 0) {
        snprintf(out->authority_id, sizeof out->authority_id, "%s", s->authority_id);
        sg_slot_mark_signed(&s->mark, out->not_after);
        /* The state file promises the mark before the SVID is handed out. */
        rc = sg_slots_reserve(&ca->slots, &s->mark, (int64_t)time(NULL), p->ttl_s, out->not_after,
                              s->not_after, err);
        if (rc < 0)
            sg_ca_chain_cleanup(out);
    }
    snap_release(s);
    return rc;
}

int sg_ca_server_identity(sg_ca *ca, int64_t ttl_s, char **key_pem, char **chain_pem, sg_err *err)
{
    EVP_PKEY *k = NULL;
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    char id[SG_SPIFFEID_MAX + 1], *kp = NULL, *cp = NULL;
    sg_ca_chain chain = {0};
    sg_ca_svid_params p = {0};
    int rc;

    snprintf(id, sizeof id, "spiffe://%s/spire/server", ca->td);
    rc = sg_key_generate(SG_KEY_EC_P256, &k, err);
    if (rc < 0)
        return rc;
    rc = sg_key_to_spki_der(k, &spki, &spki_len, err);
    if (rc < 0)
        goto done;
    p.spiffe_id = id;
    p.ttl_s = ttl_s;
    rc = sg_ca_sign_svid(ca, &p, spki, spki_len, &chain, err);
    if (rc < 0)
        goto done;
    rc = sg_key_to_pem(k, &kp, err);
    if (rc < 0)
        goto done;
    rc = sg_x509_der_list_to_pem(chain.certs, chain.n, &cp, err);
    if (rc < 0) {
        sg_key_pem_free(kp);
        goto done;
    }
    *key_pem = kp;
    *chain_pem = cp;
done:
    sg_ca_chain_cleanup(&chain);
    OPENSSL_free(spki);
    EVP_PKEY_free(k);
    return rc;
}

/* ---- CA certificates ---- */

static const EVP_MD *md_for_signer(EVP_PKEY *key)
{
    if (EVP_PKEY_is_a(key, "EC")) {
        int bits = EVP_PKEY_get_bits(key);
        if (bits > 384)
            return EVP_sha512();
        if (bits > 256)
            return EVP_sha384();
    }
    return EVP_sha256();
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value, sg_err *err)
{
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, value);

    if (e == NULL || !X509_add_ext(x, e, -1)) {
        X509_EXTENSION_free(e);
        return sg_err_ssl(err, "adding CA extension %s", OBJ_nid2sn(nid));
    }
    X509_EXTENSION_free(e);
    return 0;
}

static int add_name(X509_NAME *n, const char *field, const char *value, sg_err *err)
{
    if (value == NULL || value[0] == '\0')
        return 0;
    if (!X509_NAME_add_entry_by_txt(n, field, MBSTRING_UTF8, (const unsigned char *)value, -1, -1,
                                    0))
        return sg_err_ssl(err, "CA subject %s \"%.64s\" is not valid", field, value);
    return 0;
}

/*
 * Creates the CA certificate for key: self-signed when issuer is NULL,
 * otherwise signed by issuer_key with notAfter capped at the issuer's.
 */
static int make_ca_cert(const sg_ca_options *o, const char *td, int64_t now, EVP_PKEY *key,
                        X509 *issuer, EVP_PKEY *issuer_key, X509 **out, sg_err *err)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    BIGNUM *bn = BN_new();
    X509V3_CTX ctx;
    char san[SG_TRUST_DOMAIN_MAX + 16];
    int64_t ttl = o->ca_ttl_s > 0 ? o->ca_ttl_s : CA_DEFAULT_TTL_S;
    int64_t na = now + ttl;
    int rc;

    if (x == NULL || name == NULL || bn == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory creating CA certificate");
        goto fail;
    }
    if (issuer != NULL && na > sg_x509_not_after(issuer))
        na = sg_x509_not_after(issuer);
    if (!X509_set_version(x, 2) || !BN_rand(bn, 128, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) ||
        !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) ||
        !ASN1_TIME_set(X509_getm_notBefore(x), (time_t)(now - LEAF_BACKDATE_S)) ||
        !ASN1_TIME_set(X509_getm_notAfter(x), (time_t)na) || !X509_set_pubkey(x, key)) {
        rc = sg_err_ssl(err, "building CA certificate");
        goto fail;
    }
    rc = add_name(name, "C", o->subject_country ? o->subject_country : "US", err);
    if (rc == 0)
        rc = add_name(name, "O", o->subject_org ? o->subject_org : "SPIFFE", err);
    if (rc == 0)
        rc = add_name(name, "CN", o->subject_cn, err);
    if (rc < 0)
        goto fail;
    if (!X509_set_subject_name(x, name) ||
        !X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name)) {
        rc = sg_err_ssl(err, "setting CA names");
        goto fail;
    }
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    snprintf(san, sizeof san, "URI:spiffe://%s", td);
    if ((rc = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE", err)) < 0 ||
        (rc = add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign,digitalSignature",
                      err)) < 0 ||
        (rc = add_ext(x, &ctx, NID_subject_key_identifier, "hash", err)) < 0 ||
        (issuer != NULL && X509_get0_subject_key_id(issuer) != NULL &&
         (rc = add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always", err)) < 0) ||
        (rc = add_ext(x, &ctx, NID_subject_alt_name, san, err)) < 0)
        goto fail;
    if (X509_sign(x, issuer ? issuer_key : key, md_for_signer(issuer ? issuer_key : key)) <= 0) {
        rc = sg_err_ssl(err, "signing CA certificate");
        goto fail;
    }
    BN_free(bn);
    X509_NAME_free(name);
    *out = x;
    return 0;
fail:
    BN_free(bn);
    X509_NAME_free(name);
    X509_free(x);
    return rc;
}

/* Reads a PEM certificate file (bounded) into a new stack. */
static int read_pem_certs(const char *path, STACK_OF(X509) * *out, sg_err *err)
{
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = sg_fs_read_file(path, UPSTREAM_FILE_MAX, &data, &len, err);

    if (rc < 0)
        return rc;
    rc = sg_x509_parse_pem_chain((const char *)data, len, out, err);
    free(data);
    if (rc < 0 && err != NULL) {
        char tmp[SG_ERR_MSG_LEN];
        snprintf(tmp, sizeof tmp, "%.100s: %.150s", path, err->msg);
        memcpy(err->msg, tmp, sizeof tmp);
    }
    return rc;
}

static bool self_issued(X509 *x)
{
    return X509_check_issued(x, x) == X509_V_OK;
}

static void upstream_cleanup(upstream *u)
{
    EVP_PKEY_free(u->key);
    sk_X509_pop_free(u->certs, X509_free);
    sk_X509_pop_free(u->bundle, X509_free);
}

static int upstream_load(const sg_ca_options *o, upstream *u, sg_err *err)
{
    struct stat st;
    X509 *c;
    int rc;

    memset(u, 0, sizeof *u);
    if (o->upstream_key_file == NULL || o->upstream_cert_file == NULL)
        return sg_err_set(err, SG_ECONFIG,
                          "UpstreamAuthority \"disk\" needs both key_file_path and cert_file_path");
    rc = sg_key_read_file_any_mode(o->upstream_key_file, &u->key, err);
    if (rc < 0)
        goto fail;
    if (stat(o->upstream_key_file, &st) == 0 && (st.st_mode & 077) != 0)
        sg_log_warn("upstream key file %s has mode %04o: group or others can read it",
                    o->upstream_key_file, (unsigned)(st.st_mode & 07777));
    rc = read_pem_certs(o->upstream_cert_file, &u->certs, err);
    if (rc < 0)
        goto fail;
    c = sk_X509_value(u->certs, 0);
    if (X509_check_ca(c) != 1 || !(X509_get_extension_flags(c) & EXFLAG_CA)) {
        rc =
            sg_err_set(err, SG_ECONFIG,
                       "upstream certificate %.150s is not a CA (basicConstraints CA:TRUE missing)",
                       o->upstream_cert_file);
        goto fail;
    }
    if ((X509_get_extension_flags(c) & EXFLAG_KUSAGE) &&
        !(X509_get_key_usage(c) & KU_KEY_CERT_SIGN)) {
        rc = sg_err_set(err, SG_ECONFIG, "upstream certificate %.150s lacks keyCertSign key usage",
                        o->upstream_cert_file);
        goto fail;
    }
    if (X509_check_private_key(c, u->key) != 1) {
        ERR_clear_error();
        rc = sg_err_set(err, SG_ECONFIG, "upstream key %.100s does not match certificate %.100s",
                        o->upstream_key_file, o->upstream_cert_file);
        goto fail;
    }
    if (sg_x509_not_after(c) <= (int64_t)time(NULL) + 60) {
        rc = sg_err_set(err, SG_EEXPIRED, "upstream certificate %.150s has expired",
                        o->upstream_cert_file);
        goto fail;
    }
    if (o->upstream_bundle_file != NULL) {
        rc = read_pem_certs(o->upstream_bundle_file, &u->bundle, err);
        if (rc < 0)
            goto fail;
    } else {
        /* Without a bundle file, the root is the last certificate of the cert file. */
        X509 *root = sk_X509_value(u->certs, sk_X509_num(u->certs) - 1);
        u->bundle = sk_X509_new_null();
        if (u->bundle == NULL || !X509_up_ref(root) || !sk_X509_push(u->bundle, root)) {
            rc = sg_err_set(err, SG_ENOMEM, "out of memory loading upstream bundle");
            goto fail;
        }
    }
    return 0;
fail:
    upstream_cleanup(u);
    memset(u, 0, sizeof *u);
    return rc;
}

/* ---- authorities ---- */

#define WARN_EVERY_S 3600

_Static_assert(SG_CA_PREPARED == (int)SG_SLOT_PREPARED && SG_CA_ACTIVE == (int)SG_SLOT_ACTIVE &&
                   SG_CA_OLD == (int)SG_SLOT_OLD,
               "sg_ca_state mirrors sg_slot_state");

const char *sg_ca_state_name(sg_ca_state st)
{
    return sg_slot_state_name((sg_slot_state)st);
}

static void hex_of(const ASN1_OCTET_STRING *o, char *out, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *d = ASN1_STRING_get0_data(o);
    size_t n = (size_t)ASN1_STRING_length(o), j = 0;

    for (size_t i = 0; i < n && j + 2 < len; i++) {
        out[j++] = hex[d[i] >> 4];
        out[j++] = hex[d[i] & 15];
    }
    out[j] = '\0';
}

/* Authority ID: hex SKID, or the SHA-1 of the public key when the certificate has none. */
static void authority_id(X509 *c, char *out, size_t len)
{
    const ASN1_OCTET_STRING *skid = X509_get0_subject_key_id(c);
    uint8_t md[SHA_DIGEST_LENGTH];
    unsigned int mdlen = 0;

    if (skid != NULL && ASN1_STRING_length(skid) > 0) {
        hex_of(skid, out, len);
        return;
    }
    out[0] = '\0';
    if (X509_pubkey_digest(c, EVP_sha1(), md, &mdlen) == 1) {
        ASN1_OCTET_STRING *o = ASN1_OCTET_STRING_new();
        if (o != NULL && ASN1_OCTET_STRING_set(o, md, (int)mdlen))
            hex_of(o, out, len);
        ASN1_OCTET_STRING_free(o);
    }
}

/* An authority ID read from disk or a request: 2-80 lower-case hex digits. */
static bool id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;

    if (n < 2 || n > SG_CA_AUTHORITY_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return false;
    return true;
}

static int64_t asn1_time_s(const ASN1_TIME *t)
{
    struct tm tm;

    if (!ASN1_TIME_to_tm(t, &tm))
        return 0;
    return (int64_t)timegm(&tm);
}

/* Hex SKID of the root in roots that issued and signed c, or "". */
static void root_of(STACK_OF(X509) * roots, X509 *c, char *out, size_t len)
{
    out[0] = '\0';
    for (int i = 0; roots != NULL && i < sk_X509_num(roots); i++) {
        X509 *r = sk_X509_value(roots, i);
        if (X509_check_issued(r, c) == X509_V_OK && X509_verify(c, X509_get0_pubkey(r)) == 1) {
            authority_id(r, out, len);
            break;
        }
    }
    ERR_clear_error();
}

/* The upstream root sl chains to: the top of its chain (the CA, then upstream intermediates). */
static void slot_root(const sg_ca *ca, slot *sl)
{
    ca_snapshot *s = SNAP(sl);
    X509 *top = NULL;
    sg_err e;

    s->root_id[0] = '\0';
    if (!ca->have_upstream)
        return;
    if (s->ntail > 1 &&
        sg_x509_from_der(s->tail[s->ntail - 1].data, s->tail[s->ntail - 1].len, &top, &e) < 0)
        return;
    root_of(ca->u.bundle, top != NULL ? top : s->cert, s->root_id, sizeof s->root_id);
    X509_free(top);
}

/* Fills sl around cert+key (both taken); extra: the upstream certificates above it. */
static int slot_init(sg_ca *ca, slot *sl, X509 *cert, EVP_PKEY *key, sg_slot_state st,
                     STACK_OF(X509) * extra, sg_err *err)
{
    const ASN1_OCTET_STRING *akid = X509_get0_authority_key_id(cert);
    ca_snapshot *s = NULL;
    int rc;

    memset(sl, 0, sizeof *sl);
    sl->state = st;
    authority_id(cert, sl->id, sizeof sl->id);
    if (!id_ok(sl->id)) {
        X509_free(cert);
        EVP_PKEY_free(key);
        return sg_err_set(err, SG_ECRYPTO, "cannot derive an authority ID for a CA certificate");
    }
    rc = snap_new(cert, key, ca->have_upstream, extra, &s, err);
    if (rc < 0)
        return rc;
    if (ca->have_upstream && akid != NULL)
        hex_of(akid, s->upstream_id, sizeof s->upstream_id);
    sl->obj = s;
    sl->mark = &s->mark;
    sl->not_before = asn1_time_s(X509_get0_notBefore(cert));
    sl->not_after = s->not_after;
    slot_root(ca, sl);
    return 0;
}

static int slot_info(const slot *sl, void *out, sg_err *err)
{
    sg_ca_authority *a = out;

    (void)err;
    memset(a, 0, sizeof *a);
    memcpy(a->id, sl->id, sizeof a->id);
    memcpy(a->upstream_id, SNAP(sl)->upstream_id, sizeof a->upstream_id);
    a->state = (sg_ca_state)sl->state;
    a->not_before = sl->not_before;
    a->not_after = sl->not_after;
    a->tainted = sl->tainted;
    a->tainted_at = sl->tainted_at;
    return 0;
}

/* Creates a new authority valid from now (a root, or an intermediate under the upstream key). */
static int upstream_usable(sg_ca *ca, const upstream *u, sg_err *err);

static int new_authority(sg_ca *ca, int64_t now, sg_slot_state st, slot *out, sg_err *err)
{
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    int rc = ca->have_upstream ? upstream_usable(ca, &ca->u, err) : 0;

    if (rc == 0)
        rc = sg_key_generate(ca->o.key_type, &key, err);
    if (rc < 0)
        return rc;
    rc = make_ca_cert(&ca->o, ca->td, now, key,
                      ca->have_upstream ? sk_X509_value(ca->u.certs, 0) : NULL, ca->u.key, &cert,
                      err);
    if (rc < 0) {
        EVP_PKEY_free(key);
        return rc;
    }
    rc = slot_init(ca, out, cert, key, st, ca->extra, err);
    if (rc == 0)
        sg_log_info("created %s CA authority %s for %s (%s key, expires %lld)",
                    ca->have_upstream ? "intermediate" : "root", out->id, ca->td,
                    sg_key_type_name(ca->o.key_type), (long long)out->not_after);
    return rc;
}

/* ---- files in keys_dir: ca-<id>.key (0600), ca-<id>.crt, ca-slots.json; ca.key/ca.crt = active */

/* Writes the key and the certificate (with chain: then the upstream intermediates above it). */
static int persist(const char *key_path, const char *cert_path, const ca_snapshot *s, bool chain,
                   sg_err *err)
{
    char *pem = NULL;
    int rc = sg_key_write_file(key_path, s->key, err);

    if (rc < 0)
        return rc;
    if (chain && s->ntail > 1)
        rc = sg_x509_der_list_to_pem(s->tail, s->ntail, &pem, err);
    else
        rc = sg_x509_to_pem(s->cert, &pem, err);
    if (rc < 0)
        return rc;
    rc = sg_fs_write_atomic(cert_path, pem, strlen(pem), 0644, err);
    free(pem);
    return rc;
}

static int persist_pair(const sg_ca *ca, const char *kname, const char *cname, const slot *sl,
                        bool chain, sg_err *err)
{
    char *kp = sg_fs_join(ca->o.keys_dir, kname), *cp = sg_fs_join(ca->o.keys_dir, cname);
    int rc = kp && cp ? persist(kp, cp, SNAP(sl), chain, err)
                      : sg_err_set(err, SG_ENOMEM, "out of memory");
    free(kp);
    free(cp);
    return rc;
}

/* How the CA's authorities are named and kept: at the end of this file, after its hooks. */
static const sg_slots_kind CA_SLOTS;

/* ca-slots.json also lists the tainted or revoked upstream roots. mu held. */
static void decorate(void *owner, const sg_slot *sl, json_t *o)
{
    const sg_ca *ca = owner;
    json_t *ups = sl == NULL ? json_array() : NULL;

    for (size_t i = 0; ups != NULL && i < ca->nups; i++)
        json_array_append_new(ups, json_pack("{s:s,s:I,s:b}", "id", ca->ups[i].id, "tainted_at",
                                             (json_int_t)ca->ups[i].tainted_at, "revoked",
                                             ca->ups[i].revoked));
    if (ups != NULL)
        json_object_set_new(o, "upstream_authorities", ups);
}

static int write_files(sg_slots *t, const sg_slot *sl, sg_err *err)
{
    char kn[SG_CA_AUTHORITY_ID_MAX + 16], cn[SG_CA_AUTHORITY_ID_MAX + 16];

    snprintf(kn, sizeof kn, "ca-%s.key", sl->id);
    snprintf(cn, sizeof cn, "ca-%s.crt", sl->id);
    return persist_pair(t->owner, kn, cn, sl, true, err);
}

/* Writes new slot files, the state file and the legacy copy of the active authority. */
static int save_state(sg_ca *ca, sg_err *err)
{
    slot *act;
    int rc;

    if (ca->o.keys_dir == NULL)
        return 0;
    rc = sg_slots_save(&ca->slots, err);
    act = sg_slots_find_state(&ca->slots, SG_SLOT_ACTIVE);
    if (rc == 0 && act != NULL && strcmp(ca->legacy_id, act->id) != 0) {
        rc = persist_pair(ca, "ca.key", "ca.crt", act, false, err);
        if (rc == 0)
            memcpy(ca->legacy_id, act->id, sizeof ca->legacy_id);
    }
    return rc;
}

/*
 * Whether c was signed under the upstream authority: by the configured
 * upstream key, by the certificate stored above it (chain[0]: an upstream
 * certificate in use when it was created), or directly by a bundle root.
 */
static bool upstream_signed(const sg_ca *ca, X509 *c, STACK_OF(X509) * chain)
{
    bool ok =
        X509_verify(c, ca->u.key) == 1 ||
        (sk_X509_num(chain) > 0 && X509_verify(c, X509_get0_pubkey(sk_X509_value(chain, 0))) == 1);

    for (int i = 0; !ok && i < sk_X509_num(ca->u.bundle); i++)
        ok = X509_verify(c, X509_get0_pubkey(sk_X509_value(ca->u.bundle, i))) == 1;
    ERR_clear_error();
    return ok;
}

/* Why cert+key cannot serve as an authority of this CA, or NULL. */
static const char *why_unusable(const sg_ca *ca, X509 *c, EVP_PKEY *k, bool check_type, int64_t now,
                                STACK_OF(X509) * chain)
{
    sg_spiffeid id;
    sg_err e2;
    const char *why = NULL;
    int64_t margin = ca->o.ca_ttl_s / 6 < 60 ? ca->o.ca_ttl_s / 6 : 60;

    if (X509_check_private_key(c, k) != 1)
        why = "the key does not match the certificate";
    else if (check_type && !sg_slot_key_is_type(k, ca->o.key_type))
        why = "its key type differs from ca_key_type";
    else if (sg_x509_not_after(c) <= now + margin)
        why = "it has expired";
    else if (sg_x509_spiffeid(c, &id, &e2) < 0 || strcmp(id.td, ca->td) != 0)
        why = "it belongs to another trust domain";
    else if (!ca->have_upstream && !self_issued(c))
        why = "it is not self-signed and no UpstreamAuthority is configured";
    else if (!ca->have_upstream && X509_verify(c, k) != 1)
        why = "its self-signature does not verify";
    else if (ca->have_upstream && !upstream_signed(ca, c, chain))
        why = "it was not signed by the configured upstream key, the upstream certificate "
              "stored with it, or an upstream root";
    ERR_clear_error();
    return why;
}

/*
 * Reads key_path + cert_path. Returns 1 with *cert, *key and *chain (the
 * certificates after the first in cert_path; may be empty) set when usable,
 * 0 when not (reason logged), or an error (unreadable key, unsafe key mode).
 */
static int load_pair(const sg_ca *ca, const char *key_path, const char *cert_path, bool check_type,
                     X509 **cert, EVP_PKEY **key, STACK_OF(X509) * *chain, sg_err *err)
{
    STACK_OF(X509) *certs = NULL;
    EVP_PKEY *k = NULL;
    X509 *c;
    sg_err e2;
    const char *why;
    int rc = sg_key_read_file(key_path, &k, err);

    if (rc < 0)
        return rc;
    rc = read_pem_certs(cert_path, &certs, &e2);
    if (rc < 0) {
        sg_log_warn("CA certificate %s is unreadable (%s): not using it", cert_path, e2.msg);
        EVP_PKEY_free(k);
        return 0;
    }
    c = sk_X509_shift(certs);
    why = why_unusable(ca, c, k, check_type, (int64_t)time(NULL), certs);
    if (why != NULL) {
        sg_log_warn("not using CA %s: %s", cert_path, why);
        X509_free(c);
        sk_X509_pop_free(certs, X509_free);
        EVP_PKEY_free(k);
        return 0;
    }
    *cert = c;
    *key = k;
    *chain = certs;
    return 1;
}

/*
 * Makes sl from a loaded pair (all taken). Its chain: the one stored with it,
 * or the current upstream certificates when the current upstream key signed
 * it. An active or prepared authority that is not under the current upstream
 * key becomes old: the operator replaced the upstream files.
 */
static int slot_load(sg_ca *ca, slot *sl, X509 *cert, EVP_PKEY *key, STACK_OF(X509) * chain,
                     sg_slot_state state, sg_err *err)
{
    bool current = ca->have_upstream && X509_verify(cert, ca->u.key) == 1;
    STACK_OF(X509) *extra = sk_X509_num(chain) > 0 ? chain : current ? ca->extra : NULL;
    int rc;

    ERR_clear_error();
    rc = slot_init(ca, sl, cert, key, state, extra, err);
    sk_X509_pop_free(chain, X509_free);
    if (rc == 0) {
        sg_slot_mark_init(sl->mark, -1);
        if (ca->have_upstream && !current && state != SG_SLOT_OLD) {
            sg_log_info("CA authority %s was signed by an earlier upstream key: it is now old",
                        sl->id);
            sl->state = SG_SLOT_OLD;
        }
    }
    return rc;
}

/* Reads the tainted and revoked upstream roots of the state file (absent: none). */
static int load_uproots(void *owner, const char *path, json_t *root, sg_err *err)
{
    sg_ca *ca = owner;
    json_t *arr = json_object_get(root, "upstream_authorities");

    if (arr == NULL)
        return 0;
    if (!json_is_array(arr))
        return sg_err_set(err, SG_ECONFIG,
                          "CA state file %.150s: \"upstream_authorities\" is not an array", path);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *a = json_array_get(arr, i);
        const char *id = json_string_value(json_object_get(a, "id"));
        json_t *ta = json_object_get(a, "tainted_at"), *rv = json_object_get(a, "revoked");
        uproot *u;

        if (!id_ok(id) || !json_is_integer(ta) || (rv != NULL && !json_is_boolean(rv)))
            return sg_err_set(err, SG_ECONFIG,
                              "CA state file %.150s: upstream authority %zu has a bad id "
                              "\"%.90s\", tainted_at or revoked",
                              path, i, id ? id : "(none)");
        if (ca->nups >= UPROOTS_MAX) {
            sg_log_warn("CA state file %s: ignoring upstream authority %s (at most %d kept)", path,
                        id, UPROOTS_MAX);
            continue;
        }
        u = &ca->ups[ca->nups++];
        snprintf(u->id, sizeof u->id, "%s", id);
        u->tainted_at = (int64_t)json_integer_value(ta);
        u->revoked = json_is_true(rv);
    }
    return 0;
}

/* Loads one authority of the state file into sl; unusable ones are dropped with a warning. */
static int load_entry(void *owner, const char *path, json_t *o, sg_slot *sl, int64_t mark,
                      int64_t now, sg_err *err)
{
    sg_ca *ca = owner;
    slot want = *sl;
    char *kp = sg_slots_path(&ca->slots, want.id, "key");
    char *cp = sg_slots_path(&ca->slots, want.id, "crt");
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    STACK_OF(X509) *chain = NULL;
    int rc = 0;

    (void)path;
    (void)o;
    (void)now;
    if (kp == NULL || cp == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory");
    } else if (access(kp, F_OK) != 0 || access(cp, F_OK) != 0) {
        sg_log_warn("CA authority %s: %s or its certificate is missing; dropping it", want.id, kp);
    } else {
        rc = load_pair(ca, kp, cp, want.state != SG_SLOT_OLD, &cert, &key, &chain, err);
        if (rc == 1 && (rc = slot_load(ca, sl, cert, key, chain, want.state, err)) == 0)
            rc = 1;
        if (rc == 1 && strcmp(sl->id, want.id) != 0) {
            sg_log_warn("CA authority %s: its certificate has ID %s; dropping it", want.id, sl->id);
            sg_slot_clear(&ca->slots, sl);
            rc = 0;
        } else if (rc == 1) {
            sl->tainted = want.tainted;
            sl->tainted_at = want.tainted_at;
            if (mark != -1)
                sg_slot_mark_init(sl->mark, mark);
        }
    }
    free(kp);
    free(cp);
    return rc;
}

static uproot *find_uproot(sg_ca *ca, const char *id)
{
    for (size_t i = 0; i < ca->nups; i++)
        if (strcmp(ca->ups[i].id, id) == 0)
            return &ca->ups[i];
    return NULL;
}

/*
 * Rebuilds the bundle from the slots (self-signed) or the upstream roots
 * (less the revoked ones) and bumps the sequence when it changed.
 */
static int rebuild_bundle(sg_ca *ca, bool *changed, sg_err *err)
{
    sg_der *v;
    size_t n = 0, max = ca->have_upstream ? (size_t)sk_X509_num(ca->u.bundle) : ca->slots.n;
    bool same;
    int rc;

    *changed = false;
    v = calloc(max ? max : 1, sizeof *v);
    if (v == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory building the bundle");
    for (size_t i = 0; i < max; i++) {
        X509 *c =
            ca->have_upstream ? sk_X509_value(ca->u.bundle, (int)i) : SNAP(&ca->slots.v[i])->cert;
        if (ca->have_upstream) {
            char id[SG_CA_AUTHORITY_ID_MAX + 1];
            const uproot *u;
            authority_id(c, id, sizeof id);
            u = find_uproot(ca, id);
            if (u != NULL && u->revoked)
                continue;
        }
        rc = sg_x509_to_der(c, &v[n], err);
        if (rc < 0) {
            for (size_t j = 0; j < n; j++)
                sg_der_cleanup(&v[j]);
            free(v);
            return rc;
        }
        n++;
    }
    pthread_mutex_lock(&ca->mu);
    same = n == ca->nbundle;
    for (size_t i = 0; same && i < n; i++)
        same =
            v[i].len == ca->bundle[i].len && memcmp(v[i].data, ca->bundle[i].data, v[i].len) == 0;
    if (!same) {
        sg_der *oldv = ca->bundle;
        size_t oldn = ca->nbundle;
        ca->bundle = v;
        ca->nbundle = n;
        if (oldv != NULL)
            ca->bundle_seq++;
        v = oldv;
        n = oldn;
        *changed = true;
    }
    pthread_mutex_unlock(&ca->mu);
    for (size_t i = 0; i < n; i++)
        sg_der_cleanup(&v[i]);
    free(v);
    return 0;
}

/* The root of the upstream chain u: its certificate file's own root, or the bundle root above it.
 */
static void upstream_root_id(const upstream *u, char *out, size_t len)
{
    X509 *top = sk_X509_value(u->certs, 0);

    for (int i = 1; i < sk_X509_num(u->certs); i++)
        if (!self_issued(sk_X509_value(u->certs, i)))
            top = sk_X509_value(u->certs, i);
    if (self_issued(top))
        authority_id(top, out, len);
    else
        root_of(u->bundle, top, out, len);
}

/* A hash of the upstream files' inode, size and mtime: tells the schedule they were replaced. */
static uint64_t upstream_stamp(const sg_ca *ca)
{
    const char *paths[3] = {ca->up_key, ca->up_cert, ca->up_bundle};
    uint64_t h = 1469598103934665603ULL;

    for (size_t i = 0; i < 3; i++) {
        struct stat st;
        uint64_t v[4] = {0, 0, 0, 0};
        if (paths[i] != NULL && stat(paths[i], &st) == 0) {
            v[0] = (uint64_t)st.st_ino;
            v[1] = (uint64_t)st.st_size;
            v[2] = (uint64_t)st.st_mtim.tv_sec;
            v[3] = (uint64_t)st.st_mtim.tv_nsec;
        }
        for (size_t k = 0; k < 4; k++)
            h = (h ^ v[k]) * 1099511628211ULL;
    }
    return h;
}

/* Refuses upstream material that chains to a tainted or revoked upstream root. */
static int upstream_usable(sg_ca *ca, const upstream *u, sg_err *err)
{
    char id[SG_CA_AUTHORITY_ID_MAX + 1];
    const uproot *r;

    upstream_root_id(u, id, sizeof id);
    r = id[0] != '\0' ? find_uproot(ca, id) : NULL;
    if (r == NULL)
        return 0;
    return sg_err_set(err, SG_ECONFIG,
                      "upstream certificate %.100s chains to upstream authority %s, which was %s: "
                      "install a new upstream key and certificate (key_file_path, cert_file_path)",
                      ca->up_cert ? ca->up_cert : "", id, r->revoked ? "revoked" : "tainted");
}

/*
 * Reads the upstream files again (the operator may have replaced them) and,
 * when they are usable, makes them the material new authorities are signed
 * with; the bundle follows bundle_file_path. rot_mu held.
 */
static int upstream_refresh(sg_ca *ca, bool *changed, sg_err *err)
{
    sg_ca_options o = ca->o;
    upstream nu;
    STACK_OF(X509) * extra;
    bool ch = false;
    int rc;

    o.upstream_key_file = ca->up_key;
    o.upstream_cert_file = ca->up_cert;
    o.upstream_bundle_file = ca->up_bundle;
    ca->up_stamp = upstream_stamp(ca);
    rc = upstream_load(&o, &nu, err);
    if (rc < 0)
        return rc;
    rc = upstream_usable(ca, &nu, err);
    extra = rc == 0 ? sk_X509_new_null() : NULL;
    if (rc == 0 && extra == NULL)
        rc = sg_err_set(err, SG_ENOMEM, "out of memory");
    for (int i = 0; rc == 0 && i < sk_X509_num(nu.certs); i++) {
        X509 *c = sk_X509_value(nu.certs, i);
        if (!self_issued(c) && !sk_X509_push(extra, c))
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
    }
    if (rc < 0) {
        sk_X509_free(extra);
        upstream_cleanup(&nu);
        return rc;
    }
    sk_X509_free(ca->extra);
    upstream_cleanup(&ca->u);
    ca->u = nu;
    ca->extra = extra;
    for (size_t i = 0; i < ca->slots.n; i++)
        if (SNAP(&ca->slots.v[i])->root_id[0] == '\0')
            slot_root(ca, &ca->slots.v[i]);
    rc = rebuild_bundle(ca, &ch, err);
    if (ch) {
        sg_log_info("upstream bundle changed: %d root(s) in %s", sk_X509_num(nu.bundle),
                    ca->up_bundle ? ca->up_bundle : ca->up_cert);
        if (changed != NULL)
            *changed = true;
    }
    return rc;
}

/* Points ca->active at the active slot's snapshot. */
static void install_active(void *owner)
{
    sg_ca *ca = owner;
    slot *act = sg_slots_find_state(&ca->slots, SG_SLOT_ACTIVE);
    ca_snapshot *old;

    atomic_fetch_add(&SNAP(act)->refs, 1);
    pthread_mutex_lock(&ca->mu);
    old = ca->active;
    ca->active = SNAP(act);
    pthread_mutex_unlock(&ca->mu);
    snap_release(old);
}

static char *dup_opt(const char *s, bool *oom)
{
    char *d;

    if (s == NULL)
        return NULL;
    d = strdup(s);
    if (d == NULL)
        *oom = true;
    return d;
}

int sg_ca_new(sg_ca **out, const sg_ca_options *opts, sg_err *err)
{
    sg_ca *ca = NULL;
    bool oom = false, changed, found = false;
    int rc;

    if (opts == NULL || opts->trust_domain == NULL)
        return sg_err_set(err, SG_ECONFIG, "CA needs a trust domain");
    ca = calloc(1, sizeof *ca);
    if (ca == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory creating CA");
    pthread_mutex_init(&ca->mu, NULL);
    pthread_mutex_init(&ca->rot_mu, NULL);
    pthread_mutex_init(&ca->state_mu, NULL);
    ca->bundle_seq = 1;
    ca->o = *opts;
    ca->o.trust_domain = NULL;
    ca->o.subject_country = dup_opt(opts->subject_country, &oom);
    ca->o.subject_org = dup_opt(opts->subject_org, &oom);
    ca->o.subject_cn = dup_opt(opts->subject_cn, &oom);
    ca->o.keys_dir = dup_opt(opts->keys_dir, &oom);
    ca->up_key = dup_opt(opts->upstream_key_file, &oom);
    ca->up_cert = dup_opt(opts->upstream_cert_file, &oom);
    ca->up_bundle = dup_opt(opts->upstream_bundle_file, &oom);
    ca->o.upstream_key_file = NULL;
    ca->o.upstream_cert_file = NULL;
    ca->o.upstream_bundle_file = NULL;
    if (ca->o.ca_ttl_s <= 0)
        ca->o.ca_ttl_s = CA_DEFAULT_TTL_S;
    ca->slots = (sg_slots){.kind = &CA_SLOTS,
                           .owner = ca,
                           .mu = &ca->mu,
                           .rot_mu = &ca->rot_mu,
                           .state_mu = &ca->state_mu,
                           .gen = &ca->bundle_seq,
                           .max_ttl = opts->max_svid_ttl_s,
                           .dir = ca->o.keys_dir};
    if (oom) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory creating CA");
        goto fail;
    }
    rc = sg_trust_domain_parse(opts->trust_domain, ca->td, err);
    if (rc < 0)
        goto fail;
    ca->have_upstream = opts->upstream_key_file != NULL || opts->upstream_cert_file != NULL ||
                        opts->upstream_bundle_file != NULL;
    if (ca->have_upstream) {
        ca->up_stamp = upstream_stamp(ca);
        rc = upstream_load(opts, &ca->u, err);
        if (rc < 0)
            goto fail;
        /* SVID chains carry our CA and any upstream certificate that is not a root. */
        ca->extra = sk_X509_new_null();
        if (ca->extra == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
            goto fail;
        }
        for (int i = 0; i < sk_X509_num(ca->u.certs); i++) {
            X509 *c = sk_X509_value(ca->u.certs, i);
            if (!self_issued(c))
                sk_X509_push(ca->extra, c);
        }
    }
    if (ca->o.keys_dir != NULL) {
        rc = sg_slots_open(&ca->slots, (int64_t)time(NULL), &found, err);
        if (rc == 0 && !found) {
            /* The single-CA layout: ca.key + ca.crt become the active authority. */
            char *kp = sg_fs_join(ca->o.keys_dir, "ca.key");
            char *cp = sg_fs_join(ca->o.keys_dir, "ca.crt");
            X509 *cert = NULL;
            EVP_PKEY *key = NULL;
            STACK_OF(X509) *chain = NULL;
            if (kp == NULL || cp == NULL)
                rc = sg_err_set(err, SG_ENOMEM, "out of memory");
            else if (access(kp, F_OK) != 0 || access(cp, F_OK) != 0)
                sg_log_info("no CA in %s yet: creating one", ca->o.keys_dir);
            else
                rc = load_pair(ca, kp, cp, true, &cert, &key, &chain, err);
            if (rc == 1) {
                rc = slot_load(ca, &ca->slots.v[0], cert, key, chain, SG_SLOT_ACTIVE, err);
                if (rc == 0)
                    ca->slots.n = 1;
            }
            free(kp);
            free(cp);
        }
        if (rc < 0)
            goto fail;
    }
    if (ca->have_upstream) {
        rc = upstream_usable(ca, &ca->u, err);
        if (rc < 0)
            goto fail;
        for (size_t i = 0; i < ca->slots.n;) {
            const uproot *u = find_uproot(ca, SNAP(&ca->slots.v[i])->root_id);
            if (u != NULL && u->revoked) {
                sg_log_warn("CA authority %s chains to revoked upstream authority %s: dropping it",
                            ca->slots.v[i].id, u->id);
                sg_slots_drop(&ca->slots, i);
            } else {
                i++;
            }
        }
    }
    rc = sg_slots_ensure_active(&ca->slots, (int64_t)time(NULL), &found, err);
    if (rc == 0)
        rc = rebuild_bundle(ca, &changed, err);
    if (rc == 0)
        rc = save_state(ca, err);
    if (rc < 0)
        goto fail;
    install_active(ca);
    *out = ca;
    return 0;
fail:
    sg_ca_free(ca);
    return rc;
}

void sg_ca_free(sg_ca *ca)
{
    if (ca == NULL)
        return;
    snap_release(ca->active);
    sg_slots_cleanup(&ca->slots);
    for (size_t i = 0; i < ca->nbundle; i++)
        sg_der_cleanup(&ca->bundle[i]);
    free(ca->bundle);
    sk_X509_free(ca->extra);
    upstream_cleanup(&ca->u);
    free((char *)(uintptr_t)ca->o.subject_country);
    free((char *)(uintptr_t)ca->o.subject_org);
    free((char *)(uintptr_t)ca->o.subject_cn);
    free((char *)(uintptr_t)ca->o.keys_dir);
    free(ca->up_key);
    free(ca->up_cert);
    free(ca->up_bundle);
    pthread_mutex_destroy(&ca->mu);
    pthread_mutex_destroy(&ca->rot_mu);
    pthread_mutex_destroy(&ca->state_mu);
    free(ca);
}

int sg_ca_bundle_der(sg_ca *ca, sg_der **certs, size_t *n, sg_err *err)
{
    sg_der *v;
    size_t i;

    pthread_mutex_lock(&ca->mu);
    v = calloc(ca->nbundle ? ca->nbundle : 1, sizeof *v);
    for (i = 0; v != NULL && i < ca->nbundle; i++) {
        v[i].data = malloc(ca->bundle[i].len);
        if (v[i].data == NULL)
            break;
        memcpy(v[i].data, ca->bundle[i].data, ca->bundle[i].len);
        v[i].len = ca->bundle[i].len;
    }
    if (v == NULL || i < ca->nbundle) {
        pthread_mutex_unlock(&ca->mu);
        for (size_t j = 0; v != NULL && j < i; j++)
            sg_der_cleanup(&v[j]);
        free(v);
        return sg_err_set(err, SG_ENOMEM, "out of memory copying the bundle");
    }
    *n = ca->nbundle;
    pthread_mutex_unlock(&ca->mu);
    *certs = v;
    return 0;
}

int sg_ca_bundle_pem(sg_ca *ca, char **pem, sg_err *err)
{
    int rc;

    pthread_mutex_lock(&ca->mu);
    rc = sg_x509_der_list_to_pem(ca->bundle, ca->nbundle, pem, err);
    pthread_mutex_unlock(&ca->mu);
    return rc;
}

uint64_t sg_ca_bundle_sequence(sg_ca *ca)
{
    uint64_t v;

    pthread_mutex_lock(&ca->mu);
    v = ca->bundle_seq;
    pthread_mutex_unlock(&ca->mu);
    return v;
}

int64_t sg_ca_not_after(sg_ca *ca)
{
    ca_snapshot *s = snap_acquire(ca);
    int64_t v = s->not_after;

    snap_release(s);
    return v;
}

/* ---- rotation ---- */

int sg_ca_authorities(sg_ca *ca, sg_ca_authority **out, size_t *n, sg_err *err)
{
    void *v = NULL;
    int rc = sg_slots_list(&ca->slots, sizeof **out, NULL, &v, n, err);

    *out = v;
    return rc;
}

/* Rebuilds the bundle and saves the state after a slot change. rot_mu held. */
static int commit(sg_ca *ca, bool *changed, sg_err *err)
{
    bool ch = false;
    int rc = rebuild_bundle(ca, &ch, err);

    if (rc == 0)
        rc = save_state(ca, err);
    if (changed != NULL)
        *changed = *changed || ch;
    return rc;
}

static int commit_state(sg_slots *t, sg_err *err)
{
    return commit(t->owner, NULL, err);
}

/* The next authority, signed with the upstream files as they are now. rot_mu held. */
static int make_next(void *owner, int64_t now, int64_t must_outlive, sg_slot *out, bool *changed,
                     sg_err *err)
{
    sg_ca *ca = owner;
    sg_err e2;
    int rc;

    sg_err_clear(&e2);
    if (ca->have_upstream && upstream_stamp(ca) != ca->up_stamp &&
        upstream_refresh(ca, changed, &e2) < 0 && now - ca->warned_at >= WARN_EVERY_S) {
        sg_log_warn("cannot read the upstream authority files again (%s): the next CA "
                    "authority is signed with the ones loaded before",
                    e2.msg);
        ca->warned_at = now;
    }
    rc = new_authority(ca, now, SG_SLOT_PREPARED, out, err);
    if (rc < 0 || out->not_after > must_outlive)
        return rc < 0 ? rc : 1;
    /* Capped by the upstream certificate: the next CA would not outlive this one. */
    if (now - ca->warned_at >= WARN_EVERY_S) {
        sg_log_warn("cannot rotate the CA: a new authority would expire at %lld, no later than "
                    "the active one (the upstream certificate expires first); renew the "
                    "upstream certificate",
                    (long long)out->not_after);
        ca->warned_at = now;
    }
    sg_slot_clear(&ca->slots, out);
    return 0;
}

int sg_ca_rotate(sg_ca *ca, int64_t now, bool *bundle_changed, sg_err *err)
{
    bool ch = false, dirty = false;
    int rc;

    pthread_mutex_lock(&ca->rot_mu);
    rc = sg_slots_rotate(&ca->slots, ca->o.ca_ttl_s, now, &dirty, &ch, err);
    if (rc == 0 && dirty)
        rc = commit(ca, &ch, err);
    pthread_mutex_unlock(&ca->rot_mu);
    if (bundle_changed != NULL)
        *bundle_changed = ch;
    return rc;
}

int sg_ca_prepare(sg_ca *ca, int64_t now, sg_ca_authority *out, sg_err *err)
{
    slot sl;
    int rc;

    pthread_mutex_lock(&ca->rot_mu);
    rc = ca->have_upstream ? upstream_refresh(ca, NULL, err) : 0;
    if (rc == 0)
        rc = new_authority(ca, now, SG_SLOT_PREPARED, &sl, err);
    if (rc == 0)
        rc = sg_slots_prepare(&ca->slots, &sl, out, err);
    pthread_mutex_unlock(&ca->rot_mu);
    return rc;
}

int sg_ca_activate(sg_ca *ca, const char *id, int64_t now, sg_ca_authority *out, sg_err *err)
{
    return sg_slots_act(&ca->slots, SG_SLOTS_ACTIVATE, id, now, out, err);
}

int sg_ca_taint(sg_ca *ca, const char *id, int64_t now, sg_ca_authority *out, sg_err *err)
{
    return sg_slots_act(&ca->slots, SG_SLOTS_TAINT, id, now, out, err);
}

int sg_ca_revoke(sg_ca *ca, const char *id, int64_t now, sg_ca_authority *out, sg_err *err)
{
    return sg_slots_act(&ca->slots, SG_SLOTS_REVOKE, id, now, out, err);
}

void sg_ca_ids_free(char **ids, size_t n)
{
    sg_slots_ids_free(ids, n);
}

int sg_ca_tainted_ids(sg_ca *ca, char ***ids, size_t *n, sg_err *err)
{
    return sg_slots_tainted_ids(&ca->slots, ids, n, err);
}

/* ---- upstream authority: taint and revoke ---- */

/* Checks skid (lower-cases it into id) and that an UpstreamAuthority is configured. rot_mu held. */
static int upstream_id_arg(sg_ca *ca, const char *skid, char *id, sg_err *err)
{
    size_t n = skid ? strlen(skid) : 0;

    if (!ca->have_upstream)
        return sg_err_set(err, SG_EINVAL,
                          "no UpstreamAuthority is configured: the local authorities are "
                          "self-signed roots (use localauthority x509 taint|revoke)");
    if (n == 0)
        return sg_err_set(err, SG_EINVAL, "a Subject Key ID is required (-subjectKeyID)");
    for (size_t i = 0; i < n && i <= SG_CA_AUTHORITY_ID_MAX; i++)
        id[i] = (skid[i] >= 'A' && skid[i] <= 'F') ? (char)(skid[i] - 'A' + 'a') : skid[i];
    id[n <= SG_CA_AUTHORITY_ID_MAX ? n : SG_CA_AUTHORITY_ID_MAX] = '\0';
    if (n > SG_CA_AUTHORITY_ID_MAX || !id_ok(id))
        return sg_err_set(err, SG_EINVAL,
                          "Subject Key ID \"%.90s\" is not valid: it is the hex Subject Key ID of "
                          "an upstream root certificate",
                          skid);
    return 0;
}

/* Whether id is a root of the published bundle; also lists the roots into have. rot_mu held. */
static bool upstream_in_bundle(sg_ca *ca, const char *id, char *have, size_t len)
{
    bool found = false;
    size_t o = 0;

    have[0] = '\0';
    for (int i = 0; i < sk_X509_num(ca->u.bundle); i++) {
        char rid[SG_CA_AUTHORITY_ID_MAX + 1];
        const uproot *u;
        authority_id(sk_X509_value(ca->u.bundle, i), rid, sizeof rid);
        u = find_uproot(ca, rid);
        if (u != NULL && u->revoked)
            continue;
        found = found || strcmp(rid, id) == 0;
        if (o < len) {
            int k = snprintf(have + o, len - o, "%s%s", o ? ", " : "", rid);
            o += k > 0 ? (size_t)k : 0;
        }
    }
    return found;
}

int sg_ca_upstream_taint(sg_ca *ca, const char *skid, int64_t now, sg_err *err)
{
    char id[SG_CA_AUTHORITY_ID_MAX + 1], have[200];
    size_t ntainted = 0;
    uproot *u;
    int rc;

    pthread_mutex_lock(&ca->rot_mu);
    rc = upstream_id_arg(ca, skid, id, err);
    if (rc < 0)
        goto done;
    u = find_uproot(ca, id);
    if (u != NULL) {
        rc = sg_err_set(err, SG_EEXIST, "upstream authority %s is already %s", id,
                        u->revoked ? "revoked" : "tainted");
        goto done;
    }
    if (!upstream_in_bundle(ca, id, have, sizeof have)) {
        rc = sg_err_set(err, SG_ENOENT,
                        "upstream authority %s is not a root in the upstream bundle (roots: %s)",
                        id, have[0] ? have : "none");
        goto done;
    }
    for (size_t i = 0; i < ca->slots.n; i++) {
        const slot *sl = &ca->slots.v[i];
        if (sl->state != SG_SLOT_OLD && strcmp(SNAP(sl)->root_id, id) == 0) {
            rc = sg_err_set(err, SG_EINVAL,
                            "the %s local authority %s chains to upstream authority %s: install "
                            "the new upstream key and certificate, then localauthority x509 "
                            "prepare and activate, before tainting it",
                            sg_slot_state_name(sl->state), sl->id, id);
            goto done;
        }
    }
    if (ca->nups >= UPROOTS_MAX) {
        rc = sg_err_set(err, SG_ETOOBIG, "%d upstream authorities are tainted or revoked already",
                        UPROOTS_MAX);
        goto done;
    }
    pthread_mutex_lock(&ca->mu);
    u = &ca->ups[ca->nups++];
    memset(u, 0, sizeof *u);
    snprintf(u->id, sizeof u->id, "%s", id);
    u->tainted_at = now;
    for (size_t i = 0; i < ca->slots.n; i++) {
        slot *sl = &ca->slots.v[i];
        if (strcmp(SNAP(sl)->root_id, id) != 0)
            continue;
        ntainted++;
        if (!sl->tainted) {
            sl->tainted = true;
            sl->tainted_at = now;
        }
    }
    ca->bundle_seq++; /* agents learn of the taint with the next bundle */
    pthread_mutex_unlock(&ca->mu);
    sg_log_warn("upstream authority %s tainted: %zu local authorit%s under it tainted, agents "
                "re-mint every SVID they signed",
                id, ntainted, ntainted == 1 ? "y" : "ies");
    rc = save_state(ca, err);
done:
    pthread_mutex_unlock(&ca->rot_mu);
    return rc;
}

int sg_ca_upstream_revoke(sg_ca *ca, const char *skid, int64_t now, sg_err *err)
{
    char id[SG_CA_AUTHORITY_ID_MAX + 1], have[200];
    bool changed = false;
    uproot *u;
    int rc;

    pthread_mutex_lock(&ca->rot_mu);
    rc = upstream_id_arg(ca, skid, id, err);
    if (rc < 0)
        goto done;
    u = find_uproot(ca, id);
    if (u != NULL && u->revoked) {
        rc = sg_err_set(err, SG_ENOENT, "upstream authority %s is already revoked", id);
        goto done;
    }
    if (u == NULL) {
        if (upstream_in_bundle(ca, id, have, sizeof have))
            rc = sg_err_set(err, SG_EINVAL,
                            "upstream authority %s is not tainted: only a tainted upstream "
                            "authority can be revoked",
                            id);
        else
            rc = sg_err_set(err, SG_ENOENT,
                            "upstream authority %s is not a root in the upstream bundle (roots: "
                            "%s)",
                            id, have[0] ? have : "none");
        goto done;
    }
    for (size_t i = 0; i < ca->slots.n; i++) {
        const slot *sl = &ca->slots.v[i];
        int64_t until;
        if (strcmp(SNAP(sl)->root_id, id) != 0)
            continue;
        until = sg_slot_live_until(sl, ca->o.max_svid_ttl_s);
        if (now < until) {
            char when[32];
            sg_slots_fmt_utc(until, when, sizeof when);
            rc = sg_err_set(err, SG_EINVAL,
                            "upstream authority %s may still have live SVIDs (signed by local "
                            "authority %s) until %s; revoke after that",
                            id, sl->id, when);
            goto done;
        }
    }
    pthread_mutex_lock(&ca->mu);
    u->revoked = true;
    pthread_mutex_unlock(&ca->mu);
    for (size_t i = 0; i < ca->slots.n;) {
        if (strcmp(SNAP(&ca->slots.v[i])->root_id, id) == 0) {
            sg_log_info("dropping CA authority %s: its upstream authority was revoked",
                        ca->slots.v[i].id);
            sg_slots_drop(&ca->slots, i);
        } else {
            i++;
        }
    }
    sg_log_warn("upstream authority %s revoked: removed from the bundle", id);
    rc = commit(ca, &changed, err);
done:
    pthread_mutex_unlock(&ca->rot_mu);
    return rc;
}

static const sg_slots_kind CA_SLOTS = {
    .noun = "authority",
    .name = "CA authority",
    .log_noun = "CA authority ",
    .plural = "CA authorities",
    .svids = "SVIDs",
    .on_taint = "agents re-mint every SVID it signed",
    .id_hint = "the lower-case hex Subject Key ID of the CA certificate",
    .id_quote = 90,
    .id_ok = id_ok,
    .release = snap_release,
    .activated = install_active,
    .commit = commit_state,
    .report = slot_info,
    .make = make_next,
    .write_files = write_files,
    .decorate = decorate,
    .load = load_entry,
    .load_doc = load_uproots,
    .file = "ca-slots.json",
    .file_prefix = "ca-",
    .has_cert = true,
    .file_noun = "CA state file",
    .file_remedy = "fix it or remove it to fall back to ca.key/ca.crt",
    .array_key = "authorities",
    .array_desc = "an \"authorities\" array",
    .gen_key = "bundle_sequence",
    .item = "authority",
    .id_key = "id",
    .id_quote_file = 90,
    .bad_tail = ", tainted_at or signed_until",
};
