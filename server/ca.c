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

#include "common/fsutil.h"
#include "common/log.h"
#include "common/spiffeid.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

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
    X509 *cert;
    EVP_PKEY *key;
    int64_t not_after;
    uint8_t *issuer_der; /* DER Name of the CA subject = leaf issuer */
    size_t issuer_len;
    uint8_t akid[64]; /* pre-encoded authorityKeyIdentifier extension */
    size_t akid_len;
    const uint8_t *sigalg; /* DER AlgorithmIdentifier of leaf signatures */
    size_t sigalg_len;
    int digest_nid; /* NID_sha256 / NID_sha384 */
    sg_der tail[3]; /* appended after the leaf: an intermediate CA, then upstream intermediates */
    size_t ntail;
    pthread_mutex_t pool_mu; /* guards pool only; everything else is read-only */
    EVP_PKEY_CTX *pool[CTX_POOL_MAX];
    int npool;
} ca_snapshot;

struct sg_ca {
    pthread_mutex_t mu; /* guards active (swapped on rotation) */
    ca_snapshot *active;
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_der *bundle; /* trust bundle roots; immutable until rotation exists */
    size_t nbundle;
    uint64_t bundle_seq;
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

static void snap_release(ca_snapshot *s)
{
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

static bool key_is_type(EVP_PKEY *k, sg_key_type t)
{
    switch (t) {
    case SG_KEY_EC_P256:
        return EVP_PKEY_is_a(k, "EC") && EVP_PKEY_get_bits(k) == 256;
    case SG_KEY_EC_P384:
        return EVP_PKEY_is_a(k, "EC") && EVP_PKEY_get_bits(k) == 384;
    case SG_KEY_RSA_2048:
        return EVP_PKEY_is_a(k, "RSA") && EVP_PKEY_get_bits(k) == 2048;
    case SG_KEY_RSA_4096:
        return EVP_PKEY_is_a(k, "RSA") && EVP_PKEY_get_bits(k) == 4096;
    }
    return false;
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
static int make_ca_cert(const sg_ca_options *o, const char *td, EVP_PKEY *key, X509 *issuer,
                        EVP_PKEY *issuer_key, X509 **out, sg_err *err)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    BIGNUM *bn = BN_new();
    X509V3_CTX ctx;
    char san[SG_TRUST_DOMAIN_MAX + 16];
    int64_t now = (int64_t)time(NULL), ttl = o->ca_ttl_s > 0 ? o->ca_ttl_s : CA_DEFAULT_TTL_S;
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

/* Upstream material loaded from the operator's files. */
typedef struct upstream {
    EVP_PKEY *key;
    STACK_OF(X509) * certs;  /* certs[0] signs our CA; the rest is its chain */
    STACK_OF(X509) * bundle; /* roots to publish */
} upstream;

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

/*
 * Tries to reuse keys_dir/ca.key + ca.crt. Returns 1 with *cert and *key set
 * when they are usable, 0 when a new CA must be made (reason logged), or
 * an error (unreadable files, unsafe key mode).
 */
static int load_persisted(const sg_ca_options *o, const char *td, const upstream *u,
                          const char *key_path, const char *cert_path, X509 **cert, EVP_PKEY **key,
                          sg_err *err)
{
    STACK_OF(X509) *certs = NULL;
    EVP_PKEY *k = NULL;
    X509 *c;
    sg_spiffeid id;
    sg_err e2;
    struct stat st;
    const char *why = NULL;
    int rc;

    if (stat(key_path, &st) != 0 || stat(cert_path, &st) != 0) {
        sg_log_info("no CA in %s yet: creating one", o->keys_dir);
        return 0;
    }
    rc = sg_key_read_file(key_path, &k, err);
    if (rc < 0)
        return rc;
    rc = read_pem_certs(cert_path, &certs, &e2);
    if (rc < 0) {
        sg_log_warn("CA certificate %s is unreadable (%s): creating a new CA", cert_path, e2.msg);
        EVP_PKEY_free(k);
        return 0;
    }
    c = sk_X509_value(certs, 0);
    if (X509_check_private_key(c, k) != 1)
        why = "the key does not match the certificate";
    else if (!key_is_type(k, o->key_type))
        why = "its key type differs from ca_key_type";
    else if (sg_x509_not_after(c) <= (int64_t)time(NULL) + 60)
        why = "it has expired";
    else if (sg_x509_spiffeid(c, &id, &e2) < 0 || strcmp(id.td, td) != 0)
        why = "it belongs to another trust domain";
    else if (u->key == NULL && !self_issued(c))
        why = "it is not self-signed and no UpstreamAuthority is configured";
    else if (u->key == NULL && X509_verify(c, k) != 1)
        why = "its self-signature does not verify";
    else if (u->key != NULL && X509_verify(c, u->key) != 1)
        why = "it was not signed by the configured upstream key";
    ERR_clear_error();
    if (why != NULL) {
        sg_log_warn("not reusing CA in %s: %s; creating a new CA", o->keys_dir, why);
        sk_X509_pop_free(certs, X509_free);
        EVP_PKEY_free(k);
        return 0;
    }
    X509_up_ref(c);
    sk_X509_pop_free(certs, X509_free);
    *cert = c;
    *key = k;
    return 1;
}

static int persist(const char *key_path, const char *cert_path, X509 *cert, EVP_PKEY *key,
                   sg_err *err)
{
    char *pem = NULL;
    int rc = sg_key_write_file(key_path, key, err);

    if (rc < 0)
        return rc;
    rc = sg_x509_to_pem(cert, &pem, err);
    if (rc < 0)
        return rc;
    rc = sg_fs_write_atomic(cert_path, pem, strlen(pem), 0644, err);
    free(pem);
    return rc;
}

static int bundle_from(sg_ca *ca, STACK_OF(X509) * roots, X509 *self, sg_err *err)
{
    size_t n = roots ? (size_t)sk_X509_num(roots) : 1;
    int rc;

    ca->bundle = calloc(n, sizeof *ca->bundle);
    if (ca->bundle == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory building the bundle");
    for (size_t i = 0; i < n; i++) {
        rc = sg_x509_to_der(roots ? sk_X509_value(roots, (int)i) : self, &ca->bundle[i], err);
        if (rc < 0)
            return rc;
        ca->nbundle++;
    }
    return 0;
}

int sg_ca_new(sg_ca **out, const sg_ca_options *opts, sg_err *err)
{
    sg_ca *ca = NULL;
    upstream u = {0};
    STACK_OF(X509) *extra = NULL;
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    char *key_path = NULL, *cert_path = NULL;
    bool have_upstream;
    int rc;

    if (opts == NULL || opts->trust_domain == NULL)
        return sg_err_set(err, SG_ECONFIG, "CA needs a trust domain");
    ca = calloc(1, sizeof *ca);
    if (ca == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory creating CA");
    pthread_mutex_init(&ca->mu, NULL);
    ca->bundle_seq = 1;
    rc = sg_trust_domain_parse(opts->trust_domain, ca->td, err);
    if (rc < 0)
        goto fail;
    have_upstream = opts->upstream_key_file != NULL || opts->upstream_cert_file != NULL ||
                    opts->upstream_bundle_file != NULL;
    if (have_upstream) {
        rc = upstream_load(opts, &u, err);
        if (rc < 0)
            goto fail;
    }
    if (opts->keys_dir != NULL) {
        key_path = sg_fs_join(opts->keys_dir, "ca.key");
        cert_path = sg_fs_join(opts->keys_dir, "ca.crt");
        if (key_path == NULL || cert_path == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
            goto fail;
        }
        rc = sg_fs_mkdir_p(opts->keys_dir, 0700, err);
        if (rc < 0)
            goto fail;
        rc = load_persisted(opts, ca->td, &u, key_path, cert_path, &cert, &key, err);
        if (rc < 0)
            goto fail;
    }
    if (cert == NULL) {
        rc = sg_key_generate(opts->key_type, &key, err);
        if (rc < 0)
            goto fail;
        rc = make_ca_cert(opts, ca->td, key, have_upstream ? sk_X509_value(u.certs, 0) : NULL,
                          u.key, &cert, err);
        if (rc < 0)
            goto fail;
        if (opts->keys_dir != NULL) {
            rc = persist(key_path, cert_path, cert, key, err);
            if (rc < 0)
                goto fail;
        }
        {
            char sn[41];
            sg_x509_serial_hex(cert, sn, sizeof sn);
            sg_log_info("created %s CA for %s (%s key, serial %s)",
                        have_upstream ? "intermediate" : "root", ca->td,
                        sg_key_type_name(opts->key_type), sn);
        }
    }
    if (have_upstream) {
        /* SVID chains carry our CA and any upstream certificate that is not a root. */
        extra = sk_X509_new_null();
        if (extra == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
            goto fail;
        }
        for (int i = 0; i < sk_X509_num(u.certs); i++) {
            X509 *c = sk_X509_value(u.certs, i);
            if (!self_issued(c))
                sk_X509_push(extra, c);
        }
        rc = bundle_from(ca, u.bundle, NULL, err);
    } else {
        rc = bundle_from(ca, NULL, cert, err);
    }
    if (rc < 0)
        goto fail;
    rc = snap_new(cert, key, have_upstream, extra, &ca->active, err);
    cert = NULL;
    key = NULL;
    if (rc < 0)
        goto fail;
    sk_X509_free(extra);
    upstream_cleanup(&u);
    free(key_path);
    free(cert_path);
    *out = ca;
    return 0;
fail:
    sk_X509_free(extra);
    upstream_cleanup(&u);
    X509_free(cert);
    EVP_PKEY_free(key);
    free(key_path);
    free(cert_path);
    sg_ca_free(ca);
    return rc;
}

void sg_ca_free(sg_ca *ca)
{
    if (ca == NULL)
        return;
    snap_release(ca->active);
    for (size_t i = 0; i < ca->nbundle; i++)
        sg_der_cleanup(&ca->bundle[i]);
    free(ca->bundle);
    pthread_mutex_destroy(&ca->mu);
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
