/*
 * X.509 helpers shared by server and agent: DER/PEM conversion, the SPIFFE
 * ID of a certificate, CSR creation, the CSR and public-key policy applied
 * to peers, and X509-SVID verification against a bundle.
 *
 * sg_x509_spki_check walks the SubjectPublicKeyInfo DER itself: OpenSSL 3
 * sets up decoder contexts whenever it turns a key into an EVP_PKEY, which
 * would dominate the cost of minting a certificate.
 */
#include "common/x509.h"

#include <limits.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PEM_CHAIN_MAX  (8 * 1024 * 1024) /* largest PEM bundle accepted */
#define CHAIN_MAX_CERT 4096              /* most certificates in one chain or bundle */

void sg_der_cleanup(sg_der *d)
{
    if (d == NULL)
        return;
    free(d->data);
    d->data = NULL;
    d->len = 0;
}

int sg_x509_from_der(const uint8_t *der, size_t len, X509 **out, sg_err *err)
{
    const unsigned char *p = der;
    X509 *x;

    if (der == NULL || len == 0)
        return sg_err_set(err, SG_EINVAL, "certificate is empty");
    if (len > SG_X509_MAX_DER)
        return sg_err_set(err, SG_ETOOBIG, "certificate is %zu bytes (limit %d)", len,
                          SG_X509_MAX_DER);
    x = d2i_X509(NULL, &p, (long)len);
    if (x == NULL) {
        sg_err_ssl(err, "certificate (%zu bytes) is not valid DER", len);
        return err ? (err->code = SG_EINVAL) : SG_EINVAL;
    }
    if (p != der + len) {
        X509_free(x);
        return sg_err_set(err, SG_EINVAL, "certificate has %zu trailing bytes after its DER",
                          (size_t)(der + len - p));
    }
    *out = x;
    return 0;
}

int sg_x509_to_der(X509 *cert, sg_der *out, sg_err *err)
{
    int n = i2d_X509(cert, NULL);
    unsigned char *buf, *p;

    if (n <= 0)
        return sg_err_ssl(err, "encoding certificate");
    buf = malloc((size_t)n);
    if (buf == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory encoding certificate");
    p = buf;
    if (i2d_X509(cert, &p) != n) {
        free(buf);
        return sg_err_ssl(err, "encoding certificate");
    }
    out->data = buf;
    out->len = (size_t)n;
    return 0;
}

/* Appends x to sk, which takes it; past CHAIN_MAX_CERT certificates frees x and fails
 * SG_ETOOBIG naming what was parsed ("PEM data"). */
static int chain_push(STACK_OF(X509) * sk, X509 *x, const char *what, sg_err *err)
{
    if (sk_X509_num(sk) >= CHAIN_MAX_CERT || !sk_X509_push(sk, x)) {
        X509_free(x);
        return sg_err_set(err, SG_ETOOBIG, "more than %d certificates in %s", CHAIN_MAX_CERT, what);
    }
    return 0;
}

int sg_x509_parse_pem_chain(const char *pem, size_t len, STACK_OF(X509) * *certs, sg_err *err)
{
    STACK_OF(X509) *sk = NULL;
    BIO *b = NULL;
    int rc;

    if (pem == NULL || len == 0)
        return sg_err_set(err, SG_EINVAL, "PEM certificate data is empty");
    if (len > PEM_CHAIN_MAX)
        return sg_err_set(err, SG_ETOOBIG, "PEM certificate data is %zu bytes (limit %d)", len,
                          PEM_CHAIN_MAX);
    ERR_clear_error();
    b = BIO_new_mem_buf(pem, (int)len);
    sk = sk_X509_new_null();
    if (b == NULL || sk == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory parsing PEM certificates");
        goto fail;
    }
    for (;;) {
        X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
        if (x == NULL) {
            unsigned long e = ERR_peek_last_error();
            if (sk_X509_num(sk) > 0 && ERR_GET_LIB(e) == ERR_LIB_PEM &&
                ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
                ERR_clear_error();
                break;
            }
            if (sk_X509_num(sk) == 0 && ERR_GET_LIB(e) == ERR_LIB_PEM &&
                ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
                ERR_clear_error();
                rc = sg_err_set(err, SG_EINVAL, "no PEM CERTIFICATE block found");
                goto fail;
            }
            sg_err_ssl(err, "PEM certificate #%d is not valid", sk_X509_num(sk) + 1);
            rc = SG_EINVAL;
            if (err != NULL)
                err->code = rc;
            goto fail;
        }
        rc = chain_push(sk, x, "PEM data", err);
        if (rc < 0)
            goto fail;
    }
    BIO_free(b);
    *certs = sk;
    return 0;
fail:
    BIO_free(b);
    sk_X509_pop_free(sk, X509_free);
    return rc;
}

int sg_x509_parse_der_chain(const uint8_t *der, size_t len, STACK_OF(X509) * *certs, sg_err *err)
{
    STACK_OF(X509) * sk;
    const unsigned char *p = der, *end = der + len;
    int rc;

    if (der == NULL || len == 0)
        return sg_err_set(err, SG_EINVAL, "DER certificate data is empty");
    if (len > (size_t)LONG_MAX)
        return sg_err_set(err, SG_ETOOBIG, "DER certificate data is too large");
    sk = sk_X509_new_null();
    if (sk == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory parsing certificates");
    while (p < end) {
        size_t off = (size_t)(p - der);
        X509 *x = d2i_X509(NULL, &p, (long)(end - p));
        if (x == NULL) {
            sg_err_ssl(err, "certificate #%d (at byte %zu) is not valid DER", sk_X509_num(sk) + 1,
                       off);
            rc = SG_EINVAL;
            if (err != NULL)
                err->code = rc;
            goto fail;
        }
        rc = chain_push(sk, x, "DER data", err);
        if (rc < 0)
            goto fail;
    }
    *certs = sk;
    return 0;
fail:
    sk_X509_pop_free(sk, X509_free);
    return rc;
}

/* Copies a memory BIO's contents into a malloc'd NUL-terminated string. */
static int bio_to_string(BIO *b, char **out, sg_err *err)
{
    char *data, *s;
    long n = BIO_get_mem_data(b, &data);

    if (n < 0)
        n = 0;
    s = malloc((size_t)n + 1);
    if (s == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory encoding PEM");
    if (n > 0)
        memcpy(s, data, (size_t)n);
    s[n] = '\0';
    *out = s;
    return 0;
}

int sg_x509_der_list_to_pem(const sg_der *certs, size_t n, char **pem, sg_err *err)
{
    BIO *b = BIO_new(BIO_s_mem());
    int rc;

    if (b == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory encoding PEM");
    for (size_t i = 0; i < n; i++) {
        if (certs[i].len > LONG_MAX ||
            PEM_write_bio(b, "CERTIFICATE", "", certs[i].data, (long)certs[i].len) <= 0) {
            BIO_free(b);
            return sg_err_ssl(err, "encoding certificate #%zu as PEM", i + 1);
        }
    }
    rc = bio_to_string(b, pem, err);
    BIO_free(b);
    return rc;
}

int sg_x509_to_pem(X509 *cert, char **pem, sg_err *err)
{
    BIO *b = BIO_new(BIO_s_mem());
    int rc;

    if (b == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory encoding PEM");
    if (!PEM_write_bio_X509(b, cert)) {
        BIO_free(b);
        return sg_err_ssl(err, "encoding certificate as PEM");
    }
    rc = bio_to_string(b, pem, err);
    BIO_free(b);
    return rc;
}

/* Copies an IA5String into out (printable, bounded) for messages. */
static void quote_ia5(const ASN1_STRING *s, char *out, size_t outlen)
{
    const unsigned char *d = ASN1_STRING_get0_data(s);
    int n = ASN1_STRING_length(s);
    size_t j = 0;

    for (int i = 0; i < n && j + 1 < outlen; i++)
        out[j++] = (d[i] >= 0x20 && d[i] < 0x7f) ? (char)d[i] : '?';
    out[j] = '\0';
}

int sg_x509_spiffeid(X509 *cert, sg_spiffeid *out, sg_err *err)
{
    GENERAL_NAMES *gens;
    const ASN1_IA5STRING *uri = NULL;
    int crit = -1, nuri = 0, rc;
    char buf[SG_SPIFFEID_MAX + 1];

    gens = X509_get_ext_d2i(cert, NID_subject_alt_name, &crit, NULL);
    if (gens == NULL) {
        if (crit == -2)
            return sg_err_set(err, SG_EINVAL,
                              "certificate has more than one subjectAltName extension");
        if (crit == -1)
            return sg_err_set(err, SG_EINVAL,
                              "certificate has no subjectAltName extension (no SPIFFE ID)");
        return sg_err_set(err, SG_EINVAL, "certificate subjectAltName extension is malformed");
    }
    for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        if (gn->type == GEN_URI) {
            nuri++;
            uri = gn->d.uniformResourceIdentifier;
        }
    }
    if (nuri != 1) {
        GENERAL_NAMES_free(gens);
        return sg_err_set(err, SG_EINVAL,
                          "certificate has %d URI SANs (an X509-SVID has exactly one)", nuri);
    }
    if (ASN1_STRING_length(uri) > SG_SPIFFEID_MAX ||
        memchr(ASN1_STRING_get0_data(uri), 0, (size_t)ASN1_STRING_length(uri)) != NULL) {
        quote_ia5(uri, buf, 80);
        GENERAL_NAMES_free(gens);
        return sg_err_set(err, SG_EINVAL, "URI SAN \"%s...\" is not a valid SPIFFE ID", buf);
    }
    memcpy(buf, ASN1_STRING_get0_data(uri), (size_t)ASN1_STRING_length(uri));
    buf[ASN1_STRING_length(uri)] = '\0';
    GENERAL_NAMES_free(gens);
    rc = sg_spiffeid_parse(buf, out, err);
    return rc;
}

void sg_x509_serial_hex(X509 *cert, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    const ASN1_INTEGER *sn = X509_get0_serialNumber(cert);
    const unsigned char *d = ASN1_STRING_get0_data(sn);
    int n = ASN1_STRING_length(sn);
    size_t j = 0;
    int i = 0;

    if (outlen == 0)
        return;
    while (i < n - 1 && d[i] == 0)
        i++;
    for (; i < n && j + 2 < outlen; i++) {
        out[j++] = hex[d[i] >> 4];
        out[j++] = hex[d[i] & 15];
    }
    if (j == 0 && outlen > 1)
        out[j++] = '0';
    out[j] = '\0';
}

int64_t sg_x509_not_after(X509 *cert)
{
    struct tm tm;

    if (!ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm))
        return 0;
    return (int64_t)timegm(&tm);
}

/* Digest to sign with for key (NULL for EdDSA, which hashes internally). */
static const EVP_MD *md_for_key(EVP_PKEY *key)
{
    if (EVP_PKEY_is_a(key, "ED25519") || EVP_PKEY_is_a(key, "ED448"))
        return NULL;
    if (EVP_PKEY_is_a(key, "EC")) {
        int bits = EVP_PKEY_get_bits(key);
        if (bits > 384)
            return EVP_sha512();
        if (bits > 256)
            return EVP_sha384();
    }
    return EVP_sha256();
}

int sg_x509_csr_create(EVP_PKEY *key, const char *uri, sg_der *out, sg_err *err)
{
    X509_REQ *req = X509_REQ_new();
    STACK_OF(X509_EXTENSION) *exts = NULL;
    GENERAL_NAMES *gens = NULL;
    unsigned char *buf = NULL, *p;
    int n, rc;

    if (req == NULL || !X509_REQ_set_version(req, 0) || !X509_REQ_set_pubkey(req, key)) {
        rc = sg_err_ssl(err, "building CSR");
        goto done;
    }
    if (uri != NULL) {
        GENERAL_NAME *gn = GENERAL_NAME_new();
        ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
        gens = GENERAL_NAMES_new();
        if (gn == NULL || ia5 == NULL || gens == NULL || !ASN1_STRING_set(ia5, uri, -1)) {
            GENERAL_NAME_free(gn);
            ASN1_IA5STRING_free(ia5);
            rc = sg_err_ssl(err, "building CSR subjectAltName");
            goto done;
        }
        GENERAL_NAME_set0_value(gn, GEN_URI, ia5);
        if (!sk_GENERAL_NAME_push(gens, gn)) {
            GENERAL_NAME_free(gn);
            rc = sg_err_ssl(err, "building CSR subjectAltName");
            goto done;
        }
        if (X509V3_add1_i2d(&exts, NID_subject_alt_name, gens, 0, X509V3_ADD_APPEND) != 1 ||
            !X509_REQ_add_extensions(req, exts)) {
            rc = sg_err_ssl(err, "adding CSR subjectAltName");
            goto done;
        }
    }
    if (X509_REQ_sign(req, key, md_for_key(key)) <= 0) {
        rc = sg_err_ssl(err, "signing CSR");
        goto done;
    }
    n = i2d_X509_REQ(req, NULL);
    if (n <= 0 || (buf = malloc((size_t)n)) == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "encoding CSR");
        goto done;
    }
    p = buf;
    i2d_X509_REQ(req, &p);
    out->data = buf;
    out->len = (size_t)n;
    buf = NULL;
    rc = 0;
done:
    free(buf);
    GENERAL_NAMES_free(gens);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    return rc;
}

int sg_x509_csr_public_key(const uint8_t *der, size_t len, sg_der *spki, sg_err *err)
{
    const unsigned char *p = der;
    X509_REQ *req;
    EVP_PKEY *pk;
    unsigned char *buf = NULL, *q;
    int n, rc;

    if (der == NULL || len == 0)
        return sg_err_set(err, SG_EINVAL, "CSR is empty");
    if (len > SG_X509_MAX_DER)
        return sg_err_set(err, SG_ETOOBIG, "CSR is %zu bytes (limit %d)", len, SG_X509_MAX_DER);
    req = d2i_X509_REQ(NULL, &p, (long)len);
    if (req == NULL) {
        ERR_clear_error();
        return sg_err_set(err, SG_EINVAL, "CSR (%zu bytes) is not a valid DER PKCS#10 request",
                          len);
    }
    if (p != der + len) {
        rc = sg_err_set(err, SG_EINVAL, "CSR has %zu trailing bytes after its DER",
                        (size_t)(der + len - p));
        goto done;
    }
    n = i2d_X509_PUBKEY(X509_REQ_get_X509_PUBKEY(req), NULL);
    if (n <= 0 || (buf = malloc((size_t)n)) == NULL) {
        rc = sg_err_set(err, SG_EINVAL, "CSR public key cannot be encoded");
        goto done;
    }
    q = buf;
    i2d_X509_PUBKEY(X509_REQ_get_X509_PUBKEY(req), &q);
    rc = sg_x509_spki_check(buf, (size_t)n, err);
    if (rc < 0) {
        if (err != NULL) {
            char tmp[SG_ERR_MSG_LEN];
            snprintf(tmp, sizeof tmp, "CSR public key: %.230s", err->msg);
            memcpy(err->msg, tmp, sizeof tmp);
        }
        goto done;
    }
    pk = X509_REQ_get0_pubkey(req);
    if (pk == NULL || X509_REQ_verify(req, pk) != 1) {
        ERR_clear_error();
        rc = sg_err_set(err, SG_EINVAL, "CSR signature does not verify with its public key");
        goto done;
    }
    spki->data = buf;
    spki->len = (size_t)n;
    buf = NULL;
    rc = 0;
done:
    free(buf);
    X509_REQ_free(req);
    return rc;
}

/*
 * Minimal strict DER reader: one TLV with the expected tag at *p, definite
 * minimal length within end. On success (*c, *clen) is the content and *p
 * moves past the TLV.
 */
static bool der_get(const uint8_t **p, const uint8_t *end, uint8_t tag, const uint8_t **c,
                    size_t *clen)
{
    const uint8_t *s = *p;
    size_t len;

    if (end - s < 2 || s[0] != tag)
        return false;
    s++;
    if (*s < 0x80) {
        len = *s++;
    } else {
        size_t nb = *s++ & 0x7f;
        if (nb == 0 || nb > 3 || (size_t)(end - s) < nb || s[0] == 0)
            return false;
        len = 0;
        for (size_t i = 0; i < nb; i++)
            len = (len << 8) | *s++;
        if (len < 0x80)
            return false; /* not minimal */
    }
    if ((size_t)(end - s) < len)
        return false;
    *c = s;
    *clen = len;
    *p = s + len;
    return true;
}

/* Dotted text of an OID's content bytes, for messages. */
static void oid_text(const uint8_t *d, size_t n, char *out, size_t outlen)
{
    size_t j = 0;
    unsigned long v = 0;
    bool first = true;

    out[0] = '\0';
    for (size_t i = 0; i < n && j + 24 < outlen; i++) {
        v = (v << 7) | (d[i] & 0x7f);
        if (d[i] & 0x80)
            continue;
        if (first) {
            unsigned long a = v < 40 ? 0 : v < 80 ? 1 : 2;
            j += (size_t)snprintf(out + j, outlen - j, "%lu.%lu", a, v - a * 40);
            first = false;
        } else {
            j += (size_t)snprintf(out + j, outlen - j, ".%lu", v);
        }
        v = 0;
    }
}

#define OID_EQ(d, n, lit) ((n) == sizeof(lit) - 1 && memcmp((d), (lit), (n)) == 0)

static const char OID_EC[] = "\x2a\x86\x48\xce\x3d\x02\x01";
static const char OID_P256[] = "\x2a\x86\x48\xce\x3d\x03\x01\x07";
static const char OID_P384[] = "\x2b\x81\x04\x00\x22";
static const char OID_P521[] = "\x2b\x81\x04\x00\x23";
static const char OID_RSA[] = "\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01";
static const char OID_RSAPSS[] = "\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0a";
static const char OID_DSA[] = "\x2a\x86\x48\xce\x38\x04\x01";
static const char OID_ED25519[] = "\x2b\x65\x70";
static const char OID_ED448[] = "\x2b\x65\x71";
static const char OID_X25519[] = "\x2b\x65\x6e";

/* Magnitude of a positive, minimally encoded DER INTEGER; false otherwise. */
static bool der_uint(const uint8_t *c, size_t n, const uint8_t **mag, size_t *mlen)
{
    if (n == 0 || (c[0] & 0x80))
        return false;
    if (n > 1 && c[0] == 0 && !(c[1] & 0x80))
        return false;
    while (n > 1 && c[0] == 0) {
        c++;
        n--;
    }
    *mag = c;
    *mlen = n;
    return true;
}

static int check_rsa_key(const uint8_t *k, size_t klen, sg_err *err)
{
    const uint8_t *p = k, *end = k + klen, *seq, *c, *nm, *em;
    size_t seqlen, clen, nlen, elen, bits;

    if (!der_get(&p, end, 0x30, &seq, &seqlen) || p != end)
        return sg_err_set(err, SG_EINVAL, "RSA public key is not a DER RSAPublicKey sequence");
    p = seq;
    end = seq + seqlen;
    if (!der_get(&p, end, 0x02, &c, &clen) || !der_uint(c, clen, &nm, &nlen))
        return sg_err_set(err, SG_EINVAL, "RSA modulus is not a positive DER INTEGER");
    if (!der_get(&p, end, 0x02, &c, &clen) || !der_uint(c, clen, &em, &elen) || p != end)
        return sg_err_set(err, SG_EINVAL, "RSA public exponent is not a positive DER INTEGER");
    bits = nlen * 8;
    for (uint8_t b = nm[0]; b < 0x80 && bits > 0; b = (uint8_t)(b << 1))
        bits--;
    if (bits < 2048 || bits > 8192)
        return sg_err_set(err, SG_EINVAL, "RSA key of %zu bits is not allowed (2048 to 8192)",
                          bits);
    if (!(nm[nlen - 1] & 1))
        return sg_err_set(err, SG_EINVAL, "RSA modulus is even");
    if (!(em[elen - 1] & 1) || (elen == 1 && em[0] < 3))
        return sg_err_set(err, SG_EINVAL, "RSA public exponent is not an odd number >= 3");
    return 0;
}

/*
 * The P-256 and P-384 groups, built once and read-only afterwards, so the
 * mint fast path checks points without building a group per call.
 */
static EC_GROUP *ec_groups[2];
static pthread_once_t ec_groups_once = PTHREAD_ONCE_INIT;

static void ec_groups_init(void)
{
    ec_groups[0] = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    ec_groups[1] = EC_GROUP_new_by_curve_name(NID_secp384r1);
}

/* Whether the encoded point decodes to a point on curve idx (0 = P-256, 1 = P-384). */
static bool ec_point_on_curve(int idx, const uint8_t *k, size_t klen)
{
    EC_POINT *pt;
    bool ok;

    pthread_once(&ec_groups_once, ec_groups_init);
    if (ec_groups[idx] == NULL)
        return false;
    pt = EC_POINT_new(ec_groups[idx]);
    if (pt == NULL)
        return false;
    /* oct2point rejects points off the curve, and at infinity when encoded so. */
    ok = EC_POINT_oct2point(ec_groups[idx], pt, k, klen, NULL) == 1 &&
         EC_POINT_is_on_curve(ec_groups[idx], pt, NULL) == 1 &&
         !EC_POINT_is_at_infinity(ec_groups[idx], pt);
    EC_POINT_free(pt);
    ERR_clear_error();
    return ok;
}

int sg_x509_spki_check(const uint8_t *der, size_t len, sg_err *err)
{
    const uint8_t *p = der, *end, *spki, *alg, *oid, *bits, *params;
    size_t spki_len, alg_len, oid_len, bits_len, params_len;
    char name[96];

    if (der == NULL || len == 0)
        return sg_err_set(err, SG_EINVAL, "public key is empty");
    if (len > SG_X509_MAX_DER)
        return sg_err_set(err, SG_ETOOBIG, "public key is %zu bytes (limit %d)", len,
                          SG_X509_MAX_DER);
    end = der + len;
    if (!der_get(&p, end, 0x30, &spki, &spki_len) || p != end)
        return sg_err_set(err, SG_EINVAL,
                          "public key (%zu bytes) is not one DER SubjectPublicKeyInfo", len);
    p = spki;
    end = spki + spki_len;
    if (!der_get(&p, end, 0x30, &alg, &alg_len) || !der_get(&p, end, 0x03, &bits, &bits_len) ||
        p != end)
        return sg_err_set(err, SG_EINVAL, "SubjectPublicKeyInfo is malformed");
    if (bits_len < 2 || bits[0] != 0)
        return sg_err_set(err, SG_EINVAL,
                          "subjectPublicKey BIT STRING is empty or not whole bytes");
    p = alg;
    end = alg + alg_len;
    if (!der_get(&p, end, 0x06, &oid, &oid_len))
        return sg_err_set(err, SG_EINVAL, "public key algorithm identifier is malformed");
    params = p;
    params_len = (size_t)(end - p);

    if (OID_EQ(oid, oid_len, OID_EC)) {
        const uint8_t *curve, *q = params;
        size_t curve_len, fsize, klen = bits_len - 1;
        const uint8_t *k = bits + 1;
        const char *cname;

        if (!der_get(&q, params + params_len, 0x06, &curve, &curve_len) || q != params + params_len)
            return sg_err_set(err, SG_EINVAL,
                              "EC key must name its curve (explicit or missing "
                              "curve parameters are not supported)");
        if (OID_EQ(curve, curve_len, OID_P256)) {
            fsize = 32;
            cname = "P-256";
        } else if (OID_EQ(curve, curve_len, OID_P384)) {
            fsize = 48;
            cname = "P-384";
        } else if (OID_EQ(curve, curve_len, OID_P521)) {
            return sg_err_set(err, SG_EINVAL, "EC curve P-521 is not allowed (P-256 or P-384)");
        } else {
            oid_text(curve, curve_len, name, sizeof name);
            return sg_err_set(err, SG_EINVAL, "EC curve %s is not allowed (P-256 or P-384)", name);
        }
        if (!((k[0] == 0x04 && klen == 1 + 2 * fsize) ||
              ((k[0] == 0x02 || k[0] == 0x03) && klen == 1 + fsize)))
            return sg_err_set(err, SG_EINVAL,
                              "EC point (%zu bytes, prefix 0x%02x) is not a %s point", klen, k[0],
                              cname);
        if (!ec_point_on_curve(fsize == 32 ? 0 : 1, k, klen))
            return sg_err_set(err, SG_EINVAL, "EC point is not on the %s curve", cname);
        return 0;
    }
    if (OID_EQ(oid, oid_len, OID_RSA)) {
        if (params_len != 2 || params[0] != 0x05 || params[1] != 0x00)
            return sg_err_set(err, SG_EINVAL, "RSA algorithm parameters must be NULL");
        return check_rsa_key(bits + 1, bits_len - 1, err);
    }
    if (OID_EQ(oid, oid_len, OID_ED25519))
        return sg_err_set(err, SG_EINVAL, "Ed25519 keys are not allowed (EC P-256/P-384 or RSA)");
    if (OID_EQ(oid, oid_len, OID_ED448))
        return sg_err_set(err, SG_EINVAL, "Ed448 keys are not allowed (EC P-256/P-384 or RSA)");
    if (OID_EQ(oid, oid_len, OID_X25519))
        return sg_err_set(err, SG_EINVAL, "X25519 keys are not allowed (EC P-256/P-384 or RSA)");
    if (OID_EQ(oid, oid_len, OID_DSA))
        return sg_err_set(err, SG_EINVAL, "DSA keys are not allowed (EC P-256/P-384 or RSA)");
    if (OID_EQ(oid, oid_len, OID_RSAPSS))
        return sg_err_set(err, SG_EINVAL, "RSA-PSS keys are not allowed (EC P-256/P-384 or RSA)");
    oid_text(oid, oid_len, name, sizeof name);
    return sg_err_set(err, SG_EINVAL, "public key algorithm %s is not allowed (EC or RSA)", name);
}

int sg_x509_verify_svid(X509 *leaf, STACK_OF(X509) * intermediates, STACK_OF(X509) * roots,
                        int64_t now, sg_spiffeid *id, sg_err *err)
{
    X509_STORE *store = NULL;
    X509_STORE_CTX *ctx = NULL;
    sg_spiffeid tmp;
    uint32_t flags, ku;
    int rc;

    if (leaf == NULL)
        return sg_err_set(err, SG_EINVAL, "no certificate to verify");
    if (roots == NULL || sk_X509_num(roots) == 0)
        return sg_err_set(err, SG_EUNTRUSTED, "no trusted roots to verify against");
    store = X509_STORE_new();
    ctx = X509_STORE_CTX_new();
    if (store == NULL || ctx == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory verifying certificate");
        goto done;
    }
    for (int i = 0; i < sk_X509_num(roots); i++) {
        if (!X509_STORE_add_cert(store, sk_X509_value(roots, i))) {
            rc = sg_err_ssl(err, "adding trusted root #%d", i + 1);
            goto done;
        }
    }
    if (!X509_STORE_CTX_init(ctx, store, leaf, intermediates)) {
        rc = sg_err_ssl(err, "setting up certificate verification");
        goto done;
    }
    if (now != 0)
        X509_STORE_CTX_set_time(ctx, 0, (time_t)now);
    if (X509_verify_cert(ctx) != 1) {
        int e = X509_STORE_CTX_get_error(ctx);
        ERR_clear_error();
        rc = sg_err_set(err, e == X509_V_ERR_CERT_HAS_EXPIRED ? SG_EEXPIRED : SG_EUNTRUSTED,
                        "certificate chain does not verify: %s (at depth %d)",
                        X509_verify_cert_error_string(e), X509_STORE_CTX_get_error_depth(ctx));
        goto done;
    }
    flags = X509_get_extension_flags(leaf);
    if (flags & EXFLAG_INVALID) {
        rc = sg_err_set(err, SG_EINVAL, "leaf certificate has invalid extensions");
        goto done;
    }
    if (flags & EXFLAG_CA) {
        rc = sg_err_set(err, SG_EINVAL, "leaf certificate is a CA (basicConstraints CA:TRUE)");
        goto done;
    }
    ku = X509_get_key_usage(leaf);
    if (!(flags & EXFLAG_KUSAGE) || !(ku & KU_DIGITAL_SIGNATURE)) {
        rc = sg_err_set(err, SG_EINVAL, "leaf certificate lacks the digitalSignature key usage");
        goto done;
    }
    if (ku & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)) {
        rc = sg_err_set(err, SG_EINVAL, "leaf certificate has keyCertSign or cRLSign key usage");
        goto done;
    }
    rc = sg_x509_spiffeid(leaf, &tmp, err);
    if (rc < 0)
        goto done;
    if (id != NULL) {
        *id = tmp;
        id->path = id->str + (tmp.path - tmp.str); /* path points into str */
    }
    rc = 0;
done:
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return rc;
}
