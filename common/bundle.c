/*
 * SPIFFE bundles: the in-memory form (sg_bundle) and its JWKS encoding
 * per SPIFFE Trust Domain and Bundle section 4, X509-SVID section 6 and
 * JWT-SVID section 6.
 *
 * JSON goes through jansson with duplicate member names refused (bundle
 * spec 6.3). Public keys move between JWK parameters and EVP_PKEY through
 * OpenSSL 3's parameter interface; every key read from a JWK passes
 * EVP_PKEY_public_check and the size policy below before it is kept.
 */
#include "common/bundle.h"

#include "common/spiffeid.h"

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>

#define BUNDLE_JSON_MAX (4 * 1024 * 1024) /* largest bundle document accepted */
#define BUNDLE_KEYS_MAX 1024              /* most JWKs in one bundle */
#define KID_MAX         256               /* longest kid accepted */
#define RSA_MIN_BITS    2048
#define RSA_MAX_BITS    8192

/*
 * Copies up to max bytes of untrusted s into out (at least max + 1 bytes)
 * for an error message, replacing anything but printable ASCII with '?'.
 */
static const char *quote(const char *s, size_t max, char *out)
{
    size_t i;

    for (i = 0; s != NULL && s[i] != '\0' && i < max; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"') ? s[i] : '?';
    out[i] = '\0';
    return out;
}

/* ---- base64 ---- */

static const char B64_STD[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char B64_URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int sg_bundle_b64_encode(const uint8_t *in, size_t len, bool url, char **out, sg_err *err)
{
    const char *tab = url ? B64_URL : B64_STD;
    size_t cap = (len + 2) / 3 * 4 + 1, o = 0, i;
    char *s;

    if (len > ((size_t)1 << 30))
        return sg_err_set(err, SG_ETOOBIG, "base64: %zu bytes is too large to encode", len);
    s = malloc(cap);
    if (s == NULL)
        return sg_err_set(err, SG_ENOMEM, "base64: out of memory");
    for (i = 0; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        s[o++] = tab[v >> 18 & 63];
        s[o++] = tab[v >> 12 & 63];
        s[o++] = tab[v >> 6 & 63];
        s[o++] = tab[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        s[o++] = tab[v >> 18 & 63];
        s[o++] = tab[v >> 12 & 63];
        if (!url) {
            s[o++] = '=';
            s[o++] = '=';
        }
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        s[o++] = tab[v >> 18 & 63];
        s[o++] = tab[v >> 12 & 63];
        s[o++] = tab[v >> 6 & 63];
        if (!url)
            s[o++] = '=';
    }
    s[o] = '\0';
    *out = s;
    return 0;
}

static int b64_val(unsigned char c, bool url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

int sg_bundle_b64_decode(const char *in, size_t len, bool url, uint8_t **out, size_t *outlen,
                         sg_err *err)
{
    const char *what = url ? "base64url" : "base64";
    size_t pad = 0, n, o = 0, i;
    uint32_t acc = 0;
    int bits = 0;
    uint8_t *d;

    if (in == NULL)
        return sg_err_set(err, SG_EINVAL, "%s: no input", what);
    if (!url) {
        if (len % 4 != 0)
            return sg_err_set(err, SG_EINVAL, "%s: length %zu is not a multiple of 4", what, len);
        while (pad < 2 && pad < len && in[len - 1 - pad] == '=')
            pad++;
    } else if (len % 4 == 1) {
        return sg_err_set(err, SG_EINVAL, "%s: length %zu is impossible", what, len);
    }
    n = len - pad;
    d = malloc(n / 4 * 3 + 3 + 1);
    if (d == NULL)
        return sg_err_set(err, SG_ENOMEM, "%s: out of memory", what);
    for (i = 0; i < n; i++) {
        int v = b64_val((unsigned char)in[i], url);
        if (v < 0) {
            free(d);
            return sg_err_set(err, SG_EINVAL, "%s: invalid character at offset %zu", what, i);
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            d[o++] = (uint8_t)(acc >> bits);
            acc &= ((uint32_t)1 << bits) - 1;
        }
    }
    /* Leftover bits must be zero, or two encodings would decode the same. */
    if (acc != 0) {
        free(d);
        return sg_err_set(err, SG_EINVAL, "%s: non-zero trailing bits", what);
    }
    d[o] = 0;
    *out = d;
    *outlen = o;
    return 0;
}

/* ---- bundle values ---- */

void sg_bundle_cleanup(sg_bundle *b)
{
    if (b == NULL)
        return;
    free(b->trust_domain);
    for (size_t i = 0; i < b->nx509; i++)
        sg_der_cleanup(&b->x509[i]);
    free(b->x509);
    for (size_t i = 0; i < b->njwt; i++) {
        free(b->jwt[i].kid);
        sg_der_cleanup(&b->jwt[i].spki);
    }
    free(b->jwt);
    memset(b, 0, sizeof *b);
}

static int der_dup(sg_der *dst, const sg_der *src)
{
    dst->data = malloc(src->len ? src->len : 1);
    if (dst->data == NULL)
        return SG_ENOMEM;
    if (src->len)
        memcpy(dst->data, src->data, src->len);
    dst->len = src->len;
    return 0;
}

int sg_bundle_copy(sg_bundle *dst, const sg_bundle *src, sg_err *err)
{
    sg_bundle b;

    memset(&b, 0, sizeof b);
    b.sequence = src->sequence;
    b.refresh_hint = src->refresh_hint;
    if (src->trust_domain != NULL && (b.trust_domain = strdup(src->trust_domain)) == NULL)
        goto oom;
    if (src->nx509 > 0) {
        b.x509 = calloc(src->nx509, sizeof *b.x509);
        if (b.x509 == NULL)
            goto oom;
        for (; b.nx509 < src->nx509; b.nx509++)
            if (der_dup(&b.x509[b.nx509], &src->x509[b.nx509]) < 0)
                goto oom;
    }
    if (src->njwt > 0) {
        b.jwt = calloc(src->njwt, sizeof *b.jwt);
        if (b.jwt == NULL)
            goto oom;
        for (; b.njwt < src->njwt; b.njwt++) {
            const sg_jwt_key *k = &src->jwt[b.njwt];
            sg_jwt_key *d = &b.jwt[b.njwt];
            d->expires_at = k->expires_at;
            if ((d->kid = strdup(k->kid ? k->kid : "")) == NULL)
                goto oom;
            if (der_dup(&d->spki, &k->spki) < 0) {
                b.njwt++; /* so cleanup frees the kid */
                goto oom;
            }
        }
    }
    *dst = b;
    return 0;
oom:
    sg_bundle_cleanup(&b);
    return sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
}

static bool der_eq(const sg_der *a, const sg_der *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

static bool jwt_key_eq(const sg_jwt_key *a, const sg_jwt_key *b)
{
    return strcmp(a->kid ? a->kid : "", b->kid ? b->kid : "") == 0 && der_eq(&a->spki, &b->spki);
}

bool sg_bundle_same_keys(const sg_bundle *a, const sg_bundle *b)
{
    bool same = true;
    bool *used;
    size_t most;

    if (a->nx509 != b->nx509 || a->njwt != b->njwt)
        return false;
    most = a->nx509 > a->njwt ? a->nx509 : a->njwt;
    if (most == 0)
        return true;
    /* Each element of a must match a distinct element of b (multiset equality). */
    used = calloc(most, sizeof *used);
    if (used == NULL)
        return false;
    for (size_t i = 0; same && i < a->nx509; i++) {
        size_t j;
        for (j = 0; j < b->nx509; j++)
            if (!used[j] && der_eq(&a->x509[i], &b->x509[j]))
                break;
        if (j == b->nx509)
            same = false;
        else
            used[j] = true;
    }
    memset(used, 0, most * sizeof *used);
    for (size_t i = 0; same && i < a->njwt; i++) {
        size_t j;
        for (j = 0; j < b->njwt; j++)
            if (!used[j] && jwt_key_eq(&a->jwt[i], &b->jwt[j]))
                break;
        if (j == b->njwt)
            same = false;
        else
            used[j] = true;
    }
    free(used);
    return same;
}

const sg_jwt_key *sg_bundle_find_jwt_key(const sg_bundle *b, const char *kid)
{
    if (b == NULL || kid == NULL)
        return NULL;
    for (size_t i = 0; i < b->njwt; i++)
        if (b->jwt[i].kid != NULL && strcmp(b->jwt[i].kid, kid) == 0)
            return &b->jwt[i];
    return NULL;
}

/* ---- JWK <-> EVP_PKEY ---- */

static const struct {
    const char *crv;   /* JWK name */
    const char *group; /* OpenSSL group name */
    size_t coord;      /* bytes per coordinate */
} CURVES[] = {
    {"P-256", "prime256v1", 32},
    {"P-384", "secp384r1", 48},
    {"P-521", "secp521r1", 66},
};

static int set_b64url(json_t *o, const char *name, const uint8_t *d, size_t len, sg_err *err)
{
    char *s = NULL;
    int rc = sg_bundle_b64_encode(d, len, true, &s, err);

    if (rc < 0)
        return rc;
    rc = json_object_set_new(o, name, json_string(s)) == 0 ? 0 : SG_ENOMEM;
    free(s);
    return rc < 0 ? sg_err_set(err, SG_ENOMEM, "bundle: out of memory") : 0;
}

static int set_bn(json_t *o, const char *name, EVP_PKEY *pk, const char *param, sg_err *err)
{
    BIGNUM *bn = NULL;
    uint8_t *buf;
    int len, rc;

    if (EVP_PKEY_get_bn_param(pk, param, &bn) != 1)
        return sg_err_ssl(err, "bundle: cannot read the RSA key's %s", name);
    len = BN_num_bytes(bn);
    buf = malloc(len > 0 ? (size_t)len : 1);
    if (buf == NULL) {
        BN_free(bn);
        return sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
    }
    BN_bn2bin(bn, buf);
    rc = set_b64url(o, name, buf, (size_t)len, err);
    free(buf);
    BN_free(bn);
    return rc;
}

/* Writes kty and the public parameters of pk into o. */
static int jwk_set_public(json_t *o, EVP_PKEY *pk, sg_err *err)
{
    if (EVP_PKEY_is_a(pk, "EC")) {
        char group[64];
        uint8_t pt[1 + 2 * 66];
        size_t ptlen = 0, c;
        if (EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                           NULL) != 1)
            return sg_err_ssl(err, "bundle: cannot read an EC key's curve");
        for (c = 0; c < sizeof CURVES / sizeof CURVES[0]; c++)
            if (strcmp(group, CURVES[c].group) == 0)
                break;
        if (c == sizeof CURVES / sizeof CURVES[0])
            return sg_err_set(err, SG_EINVAL, "bundle: unsupported EC curve \"%.60s\"", group);
        /* Ask for the uncompressed form whatever the key was decoded from. */
        if (EVP_PKEY_set_utf8_string_param(pk, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                           "uncompressed") != 1 ||
            EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, pt, sizeof pt,
                                            &ptlen) != 1 ||
            ptlen != 1 + 2 * CURVES[c].coord || pt[0] != 0x04)
            return sg_err_ssl(err, "bundle: cannot encode an EC public key");
        if (json_object_set_new(o, "kty", json_string("EC")) < 0 ||
            json_object_set_new(o, "crv", json_string(CURVES[c].crv)) < 0)
            return sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
        int rc = set_b64url(o, "x", pt + 1, CURVES[c].coord, err);
        if (rc == 0)
            rc = set_b64url(o, "y", pt + 1 + CURVES[c].coord, CURVES[c].coord, err);
        return rc;
    }
    if (EVP_PKEY_is_a(pk, "RSA")) {
        if (json_object_set_new(o, "kty", json_string("RSA")) < 0)
            return sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
        int rc = set_bn(o, "n", pk, OSSL_PKEY_PARAM_RSA_N, err);
        if (rc == 0)
            rc = set_bn(o, "e", pk, OSSL_PKEY_PARAM_RSA_E, err);
        return rc;
    }
    return sg_err_set(err, SG_EINVAL, "bundle: unsupported key type %.40s",
                      EVP_PKEY_get0_type_name(pk) ? EVP_PKEY_get0_type_name(pk) : "?");
}

/* Decodes the base64url member name of JWK i (required). */
static int jwk_b64(json_t *k, size_t i, const char *name, uint8_t **d, size_t *len, sg_err *err)
{
    json_t *v = json_object_get(k, name);
    sg_err e;

    if (!json_is_string(v))
        return sg_err_set(err, SG_EINVAL, "keys[%zu]: \"%s\" is %s", i, name,
                          v == NULL ? "missing" : "not a string");
    if (sg_bundle_b64_decode(json_string_value(v), json_string_length(v), true, d, len, &e) < 0)
        return sg_err_set(err, e.code, "keys[%zu]: \"%s\": %.150s", i, name, e.msg);
    return 0;
}

static int pkey_fromdata(OSSL_PARAM_BLD *bld, const char *type, size_t i, EVP_PKEY **out,
                         sg_err *err)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pk = NULL;
    int rc = 0;

    if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) != 1) {
        sg_err_ssl(err, "keys[%zu]: not a valid %s public key", i, type);
        rc = SG_EINVAL;
        if (err != NULL)
            err->code = SG_EINVAL;
    }
    EVP_PKEY_CTX_free(ctx);
    /*
     * EC: the point is on the curve. RSA is left to the size, parity and
     * exponent checks of jwk_public_key: OpenSSL's RSA public check runs
     * Miller-Rabin rounds on the modulus, which a hostile bundle with many
     * large keys would turn into minutes of work.
     */
    if (rc == 0 && strcmp(type, "EC") == 0) {
        ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
        if (ctx == NULL || EVP_PKEY_public_check(ctx) != 1) {
            sg_err_ssl(err, "keys[%zu]: %s public key fails its consistency check", i, type);
            rc = SG_EINVAL;
            if (err != NULL)
                err->code = SG_EINVAL;
        }
        EVP_PKEY_CTX_free(ctx);
    }
    OSSL_PARAM_free(params);
    if (rc < 0) {
        EVP_PKEY_free(pk);
        return rc;
    }
    *out = pk;
    return 0;
}

/* Builds the public key that JWK i describes (kty EC or RSA), checking the size policy. */
static int jwk_public_key(json_t *k, size_t i, const char *kty, EVP_PKEY **out, sg_err *err)
{
    char q[72];
    OSSL_PARAM_BLD *bld = NULL;
    uint8_t *a = NULL, *b = NULL, *pt = NULL;
    size_t alen = 0, blen = 0;
    BIGNUM *n = NULL, *e = NULL;
    int rc;

    if (json_object_get(k, "d") != NULL)
        return sg_err_set(err, SG_EINVAL, "keys[%zu]: holds private key material (\"d\")", i);
    bld = OSSL_PARAM_BLD_new();
    if (bld == NULL)
        return sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
    if (strcmp(kty, "EC") == 0) {
        json_t *crv = json_object_get(k, "crv");
        size_t c;
        if (!json_is_string(crv)) {
            rc = sg_err_set(err, SG_EINVAL, "keys[%zu]: \"crv\" is %s", i,
                            crv == NULL ? "missing" : "not a string");
            goto done;
        }
        for (c = 0; c < sizeof CURVES / sizeof CURVES[0]; c++)
            if (strcmp(json_string_value(crv), CURVES[c].crv) == 0)
                break;
        if (c == sizeof CURVES / sizeof CURVES[0]) {
            rc = sg_err_set(err, SG_EINVAL,
                            "keys[%zu]: unsupported curve \"%s\" (P-256, P-384 or P-521)", i,
                            quote(json_string_value(crv), 40, q));
            goto done;
        }
        if ((rc = jwk_b64(k, i, "x", &a, &alen, err)) < 0 ||
            (rc = jwk_b64(k, i, "y", &b, &blen, err)) < 0)
            goto done;
        /* RFC 7518 6.2.1.2: coordinates are the full size of the field. */
        if (alen != CURVES[c].coord || blen != CURVES[c].coord) {
            rc = sg_err_set(err, SG_EINVAL,
                            "keys[%zu]: %s coordinates must be %zu bytes (x %zu, y %zu)", i,
                            CURVES[c].crv, CURVES[c].coord, alen, blen);
            goto done;
        }
        pt = malloc(1 + 2 * CURVES[c].coord);
        if (pt == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
            goto done;
        }
        pt[0] = 0x04;
        memcpy(pt + 1, a, alen);
        memcpy(pt + 1 + alen, b, blen);
        if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, CURVES[c].group, 0) !=
                1 ||
            OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt,
                                             1 + 2 * CURVES[c].coord) != 1) {
            rc = sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
            goto done;
        }
        rc = pkey_fromdata(bld, "EC", i, out, err);
    } else {
        if ((rc = jwk_b64(k, i, "n", &a, &alen, err)) < 0 ||
            (rc = jwk_b64(k, i, "e", &b, &blen, err)) < 0)
            goto done;
        n = BN_bin2bn(a, (int)(alen > RSA_MAX_BITS ? RSA_MAX_BITS : alen), NULL);
        e = BN_bin2bn(b, (int)(blen > 8 ? 8 : blen), NULL);
        if (n == NULL || e == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
            goto done;
        }
        if (alen > RSA_MAX_BITS / 8 + 1 || BN_num_bits(n) < RSA_MIN_BITS ||
            BN_num_bits(n) > RSA_MAX_BITS) {
            rc = sg_err_set(err, SG_EINVAL, "keys[%zu]: RSA modulus of %d bits (%d..%d allowed)", i,
                            alen > RSA_MAX_BITS / 8 + 1 ? (int)(alen * 8) : BN_num_bits(n),
                            RSA_MIN_BITS, RSA_MAX_BITS);
            goto done;
        }
        if (!BN_is_odd(n)) {
            rc = sg_err_set(err, SG_EINVAL, "keys[%zu]: RSA modulus is even", i);
            goto done;
        }
        if (blen > 8 || !BN_is_odd(e) || BN_is_one(e)) {
            rc = sg_err_set(err, SG_EINVAL, "keys[%zu]: unusable RSA exponent", i);
            goto done;
        }
        if (OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) != 1 ||
            OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) != 1) {
            rc = sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
            goto done;
        }
        rc = pkey_fromdata(bld, "RSA", i, out, err);
    }
done:
    BN_free(n);
    BN_free(e);
    free(a);
    free(b);
    free(pt);
    OSSL_PARAM_BLD_free(bld);
    return rc;
}

/* ---- encode ---- */

static int jwk_for_cert(const sg_der *der, size_t i, json_t **out, sg_err *err)
{
    X509 *x = NULL;
    json_t *o = NULL;
    char *x5c = NULL;
    sg_err e;
    int rc;

    if (sg_x509_from_der(der->data, der->len, &x, &e) < 0)
        return sg_err_set(err, SG_EINVAL, "bundle: X.509 authority %zu: %.150s", i, e.msg);
    o = json_object();
    if (o == NULL || json_object_set_new(o, "use", json_string("x509-svid")) < 0) {
        rc = sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
        goto done;
    }
    if ((rc = jwk_set_public(o, X509_get0_pubkey(x), &e)) < 0) {
        rc = sg_err_set(err, e.code, "bundle: X.509 authority %zu: %.150s", i, e.msg);
        goto done;
    }
    if ((rc = sg_bundle_b64_encode(der->data, der->len, false, &x5c, err)) < 0)
        goto done;
    if (json_object_set_new(o, "x5c", json_pack("[s]", x5c)) < 0)
        rc = sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
done:
    free(x5c);
    X509_free(x);
    if (rc < 0) {
        json_decref(o);
        return rc;
    }
    *out = o;
    return 0;
}

static int jwk_for_jwt_key(const sg_jwt_key *k, size_t i, json_t **out, sg_err *err)
{
    char q[72];
    const unsigned char *p = k->spki.data;
    EVP_PKEY *pk = NULL;
    json_t *o;
    sg_err e;
    int rc;

    if (k->kid == NULL || k->kid[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "bundle: JWT authority %zu has no kid", i);
    if (k->spki.data != NULL && k->spki.len > 0 && k->spki.len < 65536)
        pk = d2i_PUBKEY(NULL, &p, (long)k->spki.len);
    if (pk == NULL || p != k->spki.data + k->spki.len) {
        EVP_PKEY_free(pk);
        return sg_err_ssl(err, "bundle: JWT authority \"%s\": public key is not valid DER",
                          quote(k->kid, 64, q));
    }
    o = json_object();
    if (o == NULL || json_object_set_new(o, "use", json_string("jwt-svid")) < 0 ||
        json_object_set_new(o, "kid", json_string(k->kid)) < 0) {
        rc = sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
        goto done;
    }
    if ((rc = jwk_set_public(o, pk, &e)) < 0)
        rc = sg_err_set(err, e.code, "bundle: JWT authority \"%s\": %.150s", quote(k->kid, 64, q),
                        e.msg);
done:
    EVP_PKEY_free(pk);
    if (rc < 0) {
        json_decref(o);
        return rc;
    }
    *out = o;
    return 0;
}

static int dump(json_t *doc, char **json, sg_err *err)
{
    char *s = json_dumps(doc, JSON_COMPACT);

    json_decref(doc);
    if (s == NULL)
        return sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
    *json = s;
    return 0;
}

static int encode(const sg_bundle *b, bool with_x509, char **json, sg_err *err)
{
    json_t *doc = json_object(), *keys = json_array();
    int rc = 0;

    if (doc == NULL || keys == NULL || json_object_set(doc, "keys", keys) < 0) {
        json_decref(keys);
        json_decref(doc);
        return sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
    }
    json_decref(keys); /* doc holds it */
    for (size_t i = 0; with_x509 && rc == 0 && i < b->nx509; i++) {
        json_t *k = NULL;
        if ((rc = jwk_for_cert(&b->x509[i], i, &k, err)) == 0 && json_array_append_new(keys, k) < 0)
            rc = sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
    }
    for (size_t i = 0; rc == 0 && i < b->njwt; i++) {
        json_t *k = NULL;
        if ((rc = jwk_for_jwt_key(&b->jwt[i], i, &k, err)) == 0 &&
            json_array_append_new(keys, k) < 0)
            rc = sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
    }
    if (rc == 0 && with_x509) {
        if (b->sequence > (uint64_t)INT64_MAX || b->refresh_hint < 0)
            rc = sg_err_set(err, SG_EINVAL, "bundle: sequence or refresh hint out of range");
        else if ((b->sequence != 0 &&
                  json_object_set_new(doc, "spiffe_sequence",
                                      json_integer((json_int_t)b->sequence)) < 0) ||
                 (b->refresh_hint != 0 &&
                  json_object_set_new(doc, "spiffe_refresh_hint",
                                      json_integer((json_int_t)b->refresh_hint)) < 0))
            rc = sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
    }
    if (rc < 0) {
        json_decref(doc);
        return rc;
    }
    return dump(doc, json, err);
}

int sg_bundle_to_jwks(const sg_bundle *b, char **json, sg_err *err)
{
    if (b == NULL || json == NULL)
        return sg_err_set(err, SG_EINVAL, "bundle: no bundle");
    return encode(b, true, json, err);
}

int sg_bundle_jwt_jwks(const sg_bundle *b, char **json, sg_err *err)
{
    if (b == NULL || json == NULL)
        return sg_err_set(err, SG_EINVAL, "bundle: no bundle");
    return encode(b, false, json, err);
}

/* ---- decode ---- */

static int set_trust_domain(sg_bundle *b, const char *trust_domain, sg_err *err)
{
    char td[SG_TRUST_DOMAIN_MAX + 1];
    int rc = sg_trust_domain_parse(trust_domain, td, err);

    if (rc < 0)
        return rc;
    b->trust_domain = strdup(td);
    if (b->trust_domain == NULL)
        return sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
    return 0;
}

/* A non-negative JSON integer member (absent = 0). */
static int get_uint(json_t *doc, const char *name, uint64_t *out, sg_err *err)
{
    json_t *v = json_object_get(doc, name);

    *out = 0;
    if (v == NULL)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return sg_err_set(err, SG_EINVAL, "bundle: \"%s\" must be a non-negative integer", name);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static bool is_ca(X509 *x)
{
    /* X509_check_ca reports 1 only for basicConstraints CA:TRUE (with keyCertSign if KU present).
     */
    return X509_check_ca(x) == 1;
}

static int decode_x509_key(json_t *k, size_t i, const char *kty, sg_bundle *b, sg_err *err)
{
    json_t *x5c = json_object_get(k, "x5c"), *c0;
    uint8_t *der = NULL;
    size_t len = 0;
    X509 *x = NULL;
    EVP_PKEY *pk = NULL;
    sg_err e;
    int rc;

    if (!json_is_array(x5c) || json_array_size(x5c) != 1)
        return sg_err_set(err, SG_EINVAL,
                          "keys[%zu]: x509-svid key needs \"x5c\" with exactly one certificate "
                          "(%s)",
                          i,
                          x5c == NULL           ? "missing"
                          : !json_is_array(x5c) ? "not an array"
                                                : "wrong count");
    c0 = json_array_get(x5c, 0);
    if (!json_is_string(c0))
        return sg_err_set(err, SG_EINVAL, "keys[%zu]: \"x5c\"[0] is not a string", i);
    if (json_string_length(c0) > (size_t)SG_X509_MAX_DER * 4 / 3 + 4)
        return sg_err_set(err, SG_EINVAL, "keys[%zu]: \"x5c\"[0] is larger than %d bytes", i,
                          SG_X509_MAX_DER);
    if (sg_bundle_b64_decode(json_string_value(c0), json_string_length(c0), false, &der, &len, &e) <
        0)
        return sg_err_set(err, SG_EINVAL, "keys[%zu]: \"x5c\"[0]: %.150s", i, e.msg);
    if (sg_x509_from_der(der, len, &x, &e) < 0) {
        rc = sg_err_set(err, SG_EINVAL, "keys[%zu]: \"x5c\"[0]: %.150s", i, e.msg);
        goto done;
    }
    if (!is_ca(x)) {
        rc = sg_err_set(err, SG_EINVAL, "keys[%zu]: \"x5c\"[0] is not a CA certificate", i);
        goto done;
    }
    /* The JWK's own parameters, when given, must be the certificate's key. */
    if ((rc = jwk_public_key(k, i, kty, &pk, err)) < 0)
        goto done;
    if (EVP_PKEY_eq(pk, X509_get0_pubkey(x)) != 1) {
        rc = sg_err_set(err, SG_EINVAL,
                        "keys[%zu]: public key parameters do not match the x5c certificate", i);
        goto done;
    }
    b->x509[b->nx509].data = der;
    b->x509[b->nx509].len = len;
    b->nx509++;
    der = NULL;
done:
    EVP_PKEY_free(pk);
    X509_free(x);
    free(der);
    return rc;
}

static int decode_jwt_key(json_t *k, size_t i, const char *kty, sg_bundle *b, sg_err *err)
{
    char q[72];
    json_t *kid = json_object_get(k, "kid");
    EVP_PKEY *pk = NULL;
    unsigned char *der = NULL;
    int len, rc;

    if (!json_is_string(kid) || json_string_length(kid) == 0)
        return sg_err_set(err, SG_EINVAL, "keys[%zu]: jwt-svid key needs a non-empty \"kid\"", i);
    if (json_string_length(kid) > KID_MAX ||
        strlen(json_string_value(kid)) != json_string_length(kid))
        return sg_err_set(err, SG_EINVAL, "keys[%zu]: \"kid\" is longer than %d bytes", i, KID_MAX);
    if (sg_bundle_find_jwt_key(b, json_string_value(kid)) != NULL)
        return sg_err_set(err, SG_EINVAL, "keys[%zu]: duplicate kid \"%s\"", i,
                          quote(json_string_value(kid), 64, q));
    if ((rc = jwk_public_key(k, i, kty, &pk, err)) < 0)
        return rc;
    len = i2d_PUBKEY(pk, &der);
    EVP_PKEY_free(pk);
    if (len <= 0)
        return sg_err_ssl(err, "keys[%zu]: cannot encode the public key", i);
    sg_jwt_key *o = &b->jwt[b->njwt];
    o->kid = strdup(json_string_value(kid));
    o->spki.data = malloc((size_t)len);
    if (o->kid == NULL || o->spki.data == NULL) {
        free(o->kid);
        free(o->spki.data);
        memset(o, 0, sizeof *o);
        OPENSSL_free(der);
        return sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
    }
    memcpy(o->spki.data, der, (size_t)len);
    o->spki.len = (size_t)len;
    o->expires_at = 0;
    OPENSSL_free(der);
    b->njwt++;
    return 0;
}

int sg_bundle_from_jwks(const char *trust_domain, const char *json, size_t len, sg_bundle *out,
                        sg_err *err)
{
    json_error_t jerr;
    json_t *doc, *keys, *k;
    sg_bundle b;
    size_t i, n;
    int rc;

    memset(&b, 0, sizeof b);
    if (json == NULL || len == 0)
        return sg_err_set(err, SG_EINVAL, "bundle: empty document");
    if (len > BUNDLE_JSON_MAX)
        return sg_err_set(err, SG_EINVAL, "bundle: document of %zu bytes exceeds %d", len,
                          BUNDLE_JSON_MAX);
    if ((rc = set_trust_domain(&b, trust_domain, err)) < 0)
        return rc;
    doc = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        sg_bundle_cleanup(&b);
        return sg_err_set(err, SG_EINVAL, "bundle: invalid JSON at line %d column %d: %.120s",
                          jerr.line, jerr.column, jerr.text);
    }
    if (!json_is_object(doc)) {
        rc = sg_err_set(err, SG_EINVAL, "bundle: the document is not a JSON object");
        goto done;
    }
    keys = json_object_get(doc, "keys");
    if (!json_is_array(keys)) {
        rc = sg_err_set(err, SG_EINVAL, "bundle: \"keys\" is %s",
                        keys == NULL ? "missing" : "not an array");
        goto done;
    }
    n = json_array_size(keys);
    if (n > BUNDLE_KEYS_MAX) {
        rc = sg_err_set(err, SG_EINVAL, "bundle: %zu keys exceed the limit of %d", n,
                        BUNDLE_KEYS_MAX);
        goto done;
    }
    uint64_t hint;
    if ((rc = get_uint(doc, "spiffe_sequence", &b.sequence, err)) < 0 ||
        (rc = get_uint(doc, "spiffe_refresh_hint", &hint, err)) < 0)
        goto done;
    b.refresh_hint = (int64_t)hint;
    if (n > 0) {
        b.x509 = calloc(n, sizeof *b.x509);
        b.jwt = calloc(n, sizeof *b.jwt);
        if (b.x509 == NULL || b.jwt == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
            goto done;
        }
    }
    json_array_foreach(keys, i, k)
    {
        json_t *use = json_object_get(k, "use"), *kty = json_object_get(k, "kty");
        if (!json_is_object(k)) {
            rc = sg_err_set(err, SG_EINVAL, "keys[%zu]: not a JSON object", i);
            goto done;
        }
        /* Bundle spec 4.2.1 and 4.2.2: unknown or missing use / kty means skip. */
        if (!json_is_string(use) || !json_is_string(kty))
            continue;
        if (strcmp(json_string_value(kty), "EC") != 0 && strcmp(json_string_value(kty), "RSA") != 0)
            continue;
        if (strcmp(json_string_value(use), "x509-svid") == 0)
            rc = decode_x509_key(k, i, json_string_value(kty), &b, err);
        else if (strcmp(json_string_value(use), "jwt-svid") == 0)
            rc = decode_jwt_key(k, i, json_string_value(kty), &b, err);
        if (rc < 0)
            goto done;
    }
done:
    json_decref(doc);
    if (rc < 0) {
        sg_bundle_cleanup(&b);
        return rc;
    }
    *out = b;
    return 0;
}

/* ---- PEM ---- */

int sg_bundle_x509_pem(const sg_bundle *b, char **pem, sg_err *err)
{
    if (b == NULL || pem == NULL)
        return sg_err_set(err, SG_EINVAL, "bundle: no bundle");
    if (b->nx509 == 0) {
        *pem = strdup("");
        return *pem ? 0 : sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
    }
    return sg_x509_der_list_to_pem(b->x509, b->nx509, pem, err);
}

int sg_bundle_from_pem(const char *trust_domain, const char *pem, size_t len, sg_bundle *out,
                       sg_err *err)
{
    STACK_OF(X509) *sk = NULL;
    sg_bundle b;
    int rc, n;

    memset(&b, 0, sizeof b);
    if ((rc = set_trust_domain(&b, trust_domain, err)) < 0)
        return rc;
    if ((rc = sg_x509_parse_pem_chain(pem, len, &sk, err)) < 0) {
        sg_bundle_cleanup(&b);
        return rc;
    }
    n = sk_X509_num(sk);
    b.x509 = calloc((size_t)n, sizeof *b.x509);
    if (b.x509 == NULL)
        rc = sg_err_set(err, SG_ENOMEM, "bundle: out of memory");
    for (int i = 0; rc == 0 && i < n; i++) {
        X509 *x = sk_X509_value(sk, i);
        if (!is_ca(x))
            rc = sg_err_set(err, SG_EINVAL, "bundle: certificate %d is not a CA certificate", i);
        else if ((rc = sg_x509_to_der(x, &b.x509[i], err)) == 0)
            b.nx509++;
    }
    sk_X509_pop_free(sk, X509_free);
    if (rc < 0) {
        sg_bundle_cleanup(&b);
        return rc;
    }
    *out = b;
    return 0;
}
