/*
 * JWT-SVIDs: signing and validation of compact JWS tokens (JWT-SVID spec,
 * RFC 7515/7518/7519).
 *
 * Built on OpenSSL EVP and jansson directly rather than a JOSE library.
 * Debian 12's libjwt (1.10) takes keys only as PEM, has no PS256/384/512
 * and no kid-based key selection; libcjose (0.6) keeps keys in its own
 * JWK objects (signing would mean exporting the raw private scalar out
 * of the EVP_PKEY) and adds nothing for the JWKS-with-x5c form. What a
 * JWT-SVID needs beyond EVP is small: base64url (common/bundle.c), the
 * ECDSA signature conversion between DER and JOSE's fixed-size r||s, and
 * the header and claim checks, which the spec wants done by hand anyway.
 *
 * Time checks: exp must be strictly after now, with no leeway. nbf and iat
 * are optional; a token is refused when either lies more than
 * SG_JWT_SKEW seconds after now (the one-minute clock-skew allowance that
 * go-jose, which go-spiffe uses, also applies to them).
 */
#include "common/jwt.h"

#include "common/spiffeid.h"

#include <jansson.h>
#include <math.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SG_JWT_SKEW 60 /* seconds of allowance for nbf and iat in the future */

typedef enum { KT_EC, KT_RSA } key_kind;

static const struct alg_info {
    const char *name;
    key_kind kind;
    const char *group; /* EC curve (OpenSSL name) */
    size_t coord;      /* EC: bytes per r and s */
    const char *md;
    bool pss;
} ALGS[] = {
    [SG_JWT_ES256] = {"ES256", KT_EC, "prime256v1", 32, "SHA256", false},
    [SG_JWT_ES384] = {"ES384", KT_EC, "secp384r1", 48, "SHA384", false},
    [SG_JWT_ES512] = {"ES512", KT_EC, "secp521r1", 66, "SHA512", false},
    [SG_JWT_RS256] = {"RS256", KT_RSA, NULL, 0, "SHA256", false},
    [SG_JWT_RS384] = {"RS384", KT_RSA, NULL, 0, "SHA384", false},
    [SG_JWT_RS512] = {"RS512", KT_RSA, NULL, 0, "SHA512", false},
    [SG_JWT_PS256] = {"PS256", KT_RSA, NULL, 0, "SHA256", true},
    [SG_JWT_PS384] = {"PS384", KT_RSA, NULL, 0, "SHA384", true},
    [SG_JWT_PS512] = {"PS512", KT_RSA, NULL, 0, "SHA512", true},
};
#define NALGS (sizeof ALGS / sizeof ALGS[0])

/*
 * Copies up to max bytes of untrusted s into out for an error message,
 * replacing anything but printable ASCII with '?'.
 */
static const char *quote(const char *s, size_t max, char *out, size_t outlen)
{
    size_t i;

    for (i = 0; s != NULL && s[i] != '\0' && i < max && i + 1 < outlen; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"') ? s[i] : '?';
    out[i] = '\0';
    return out;
}

int sg_jwt_alg_parse(const char *s, sg_jwt_alg *out, sg_err *err)
{
    char q[40];

    for (size_t i = 0; s != NULL && i < NALGS; i++) {
        if (strcmp(s, ALGS[i].name) == 0) {
            *out = (sg_jwt_alg)i;
            return 0;
        }
    }
    return sg_err_set(err, SG_EINVAL,
                      "unsupported JWT alg \"%s\" (ES256, ES384, ES512, RS256, RS384, RS512, "
                      "PS256, PS384 or PS512)",
                      quote(s, 32, q, sizeof q));
}

const char *sg_jwt_alg_name(sg_jwt_alg a)
{
    if ((unsigned)a >= NALGS)
        return "?";
    return ALGS[a].name;
}

int sg_jwt_key_type_parse(const char *s, sg_key_type *key, sg_jwt_alg *alg, sg_err *err)
{
    static const struct {
        const char *name;
        sg_key_type key;
        sg_jwt_alg alg;
    } T[] = {
        {"ec-p256", SG_KEY_EC_P256, SG_JWT_ES256},   {"ec-p384", SG_KEY_EC_P384, SG_JWT_ES384},
        {"rsa-2048", SG_KEY_RSA_2048, SG_JWT_RS256}, {"rsa-4096", SG_KEY_RSA_4096, SG_JWT_RS256},
        {"ES256", SG_KEY_EC_P256, SG_JWT_ES256},     {"ES384", SG_KEY_EC_P384, SG_JWT_ES384},
        {"RS256", SG_KEY_RSA_2048, SG_JWT_RS256},    {"PS256", SG_KEY_RSA_2048, SG_JWT_PS256},
    };
    char q[40];

    for (size_t i = 0; s != NULL && i < sizeof T / sizeof T[0]; i++) {
        if (strcmp(s, T[i].name) == 0) {
            *key = T[i].key;
            *alg = T[i].alg;
            return 0;
        }
    }
    return sg_err_set(err, SG_EINVAL,
                      "invalid jwt_key_type \"%s\" (ec-p256, ec-p384, rsa-2048, rsa-4096, ES256, "
                      "ES384, RS256 or PS256)",
                      quote(s, 32, q, sizeof q));
}

/* The EC curve of key as OpenSSL names it, or "" when key is not EC. */
static void key_group(EVP_PKEY *key, char *group, size_t len)
{
    group[0] = '\0';
    if (EVP_PKEY_is_a(key, "EC") &&
        EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, len, NULL) != 1)
        group[0] = '\0';
}

int sg_jwt_alg_for_key(EVP_PKEY *key, sg_jwt_alg *out, sg_err *err)
{
    char group[64];

    if (key == NULL)
        return sg_err_set(err, SG_EINVAL, "no key");
    if (EVP_PKEY_is_a(key, "RSA")) {
        *out = SG_JWT_RS256;
        return 0;
    }
    if (EVP_PKEY_is_a(key, "RSA-PSS")) {
        *out = SG_JWT_PS256;
        return 0;
    }
    key_group(key, group, sizeof group);
    for (size_t i = 0; i < NALGS; i++) {
        if (ALGS[i].kind == KT_EC && strcmp(group, ALGS[i].group) == 0) {
            *out = (sg_jwt_alg)i;
            return 0;
        }
    }
    return sg_err_set(err, SG_EINVAL, "no JWT alg for a %.40s key%s%.40s",
                      EVP_PKEY_get0_type_name(key) ? EVP_PKEY_get0_type_name(key) : "?",
                      group[0] ? " on curve " : "", group);
}

/* Whether key can sign or verify with alg: EC on the alg's curve, or RSA of 2048..8192 bits. */
static int key_fits_alg(EVP_PKEY *key, sg_jwt_alg alg, sg_err *err)
{
    const struct alg_info *a = &ALGS[alg];
    char group[64];

    if (a->kind == KT_RSA) {
        int bits = EVP_PKEY_get_bits(key);
        if (!EVP_PKEY_is_a(key, "RSA") && !(a->pss && EVP_PKEY_is_a(key, "RSA-PSS")))
            return sg_err_set(err, SG_EINVAL, "alg %s needs an RSA key, not %.40s", a->name,
                              EVP_PKEY_get0_type_name(key) ? EVP_PKEY_get0_type_name(key) : "?");
        if (bits < 2048 || bits > 8192)
            return sg_err_set(err, SG_EINVAL, "alg %s: RSA key of %d bits (2048..8192 allowed)",
                              a->name, bits);
        return 0;
    }
    key_group(key, group, sizeof group);
    if (strcmp(group, a->group) != 0)
        return sg_err_set(err, SG_EINVAL, "alg %s needs an EC %s key, not %.40s%s%.40s", a->name,
                          a->group,
                          EVP_PKEY_get0_type_name(key) ? EVP_PKEY_get0_type_name(key) : "?",
                          group[0] ? " on " : "", group);
    return 0;
}

int sg_jwt_kid(EVP_PKEY *key, char out[33], sg_err *err)
{
    uint8_t *der = NULL, md[32];
    size_t len = 0;
    char *s = NULL;
    int rc;

    if (key == NULL)
        return sg_err_set(err, SG_EINVAL, "no key");
    if ((rc = sg_key_to_spki_der(key, &der, &len, err)) < 0)
        return rc;
    rc = EVP_Digest(der, len, md, NULL, EVP_sha256(), NULL) == 1 ? 0 : SG_ECRYPTO;
    OPENSSL_free(der);
    if (rc < 0)
        return sg_err_ssl(err, "kid: SHA-256 failed");
    if ((rc = sg_bundle_b64_encode(md, 24, true, &s, err)) < 0)
        return rc;
    memcpy(out, s, 32);
    out[32] = '\0';
    free(s);
    return 0;
}

/* ---- signatures ---- */

static int md_ctx_init(EVP_MD_CTX *ctx, EVP_PKEY *key, sg_jwt_alg alg, bool sign)
{
    const struct alg_info *a = &ALGS[alg];
    EVP_PKEY_CTX *pctx = NULL;
    int ok = sign ? EVP_DigestSignInit_ex(ctx, &pctx, a->md, NULL, NULL, key, NULL)
                  : EVP_DigestVerifyInit_ex(ctx, &pctx, a->md, NULL, NULL, key, NULL);

    if (ok != 1)
        return -1;
    if (a->kind == KT_RSA) {
        int pad = a->pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING;
        if (EVP_PKEY_CTX_set_rsa_padding(pctx, pad) <= 0)
            return -1;
        /* RFC 7518 3.5: MGF1 with the same hash, salt as long as the hash. */
        if (a->pss && (EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0 ||
                       EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, a->md, NULL) <= 0))
            return -1;
    }
    return 0;
}

/* Signs in over input; *sig malloc'd in JOSE form (r||s for ECDSA). */
static int sign_jose(EVP_PKEY *key, sg_jwt_alg alg, const char *in, size_t inlen, uint8_t **sig,
                     size_t *siglen, sg_err *err)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint8_t *der = NULL, *raw = NULL;
    size_t dlen = 0;
    int rc = 0;

    if (ctx == NULL || md_ctx_init(ctx, key, alg, true) < 0 ||
        EVP_DigestSign(ctx, NULL, &dlen, (const uint8_t *)in, inlen) != 1 ||
        (der = malloc(dlen)) == NULL ||
        EVP_DigestSign(ctx, der, &dlen, (const uint8_t *)in, inlen) != 1) {
        rc = sg_err_ssl(err, "JWT %s signature failed", ALGS[alg].name);
        goto done;
    }
    if (ALGS[alg].kind == KT_RSA) {
        *sig = der;
        *siglen = dlen;
        der = NULL;
        goto done;
    }
    /* ECDSA: DER SEQUENCE { r, s } to fixed-size big-endian r||s (RFC 7518 3.4). */
    const uint8_t *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
    size_t c = ALGS[alg].coord;
    raw = malloc(2 * c);
    if (es == NULL || raw == NULL || BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, (int)c) < 0 ||
        BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + c, (int)c) < 0) {
        ECDSA_SIG_free(es);
        free(raw);
        rc = sg_err_ssl(err, "JWT %s signature conversion failed", ALGS[alg].name);
        goto done;
    }
    ECDSA_SIG_free(es);
    *sig = raw;
    *siglen = 2 * c;
done:
    free(der);
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* Whether sig (JOSE form) is key's alg signature over in. */
static bool verify_jose(EVP_PKEY *key, sg_jwt_alg alg, const char *in, size_t inlen,
                        const uint8_t *sig, size_t siglen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint8_t *der = NULL;
    size_t dlen = 0;
    bool ok = false;

    if (ctx == NULL)
        return false;
    if (ALGS[alg].kind == KT_EC) {
        size_t c = ALGS[alg].coord;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = NULL, *s = NULL;
        int n;
        if (siglen != 2 * c || es == NULL || (r = BN_bin2bn(sig, (int)c, NULL)) == NULL ||
            (s = BN_bin2bn(sig + c, (int)c, NULL)) == NULL || ECDSA_SIG_set0(es, r, s) != 1) {
            BN_free(r);
            BN_free(s);
            ECDSA_SIG_free(es);
            goto done;
        }
        n = i2d_ECDSA_SIG(es, &der);
        ECDSA_SIG_free(es);
        if (n <= 0)
            goto done;
        dlen = (size_t)n;
        sig = der;
        siglen = dlen;
    } else if (siglen != (size_t)EVP_PKEY_get_size(key)) {
        goto done;
    }
    ok = md_ctx_init(ctx, key, alg, false) == 0 &&
         EVP_DigestVerify(ctx, sig, siglen, (const uint8_t *)in, inlen) == 1;
done:
    OPENSSL_free(der);
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

/* ---- signing ---- */

static int b64url_json(json_t *o, char **out, sg_err *err)
{
    char *s = json_dumps(o, JSON_COMPACT);
    int rc;

    if (s == NULL)
        return sg_err_set(err, SG_ENOMEM, "JWT: out of memory");
    rc = sg_bundle_b64_encode((const uint8_t *)s, strlen(s), true, out, err);
    free(s);
    return rc;
}

int sg_jwt_sign(EVP_PKEY *key, sg_jwt_alg alg, const char *kid, const sg_jwt_claims *c,
                char **token, sg_err *err)
{
    json_t *hdr = NULL, *pl = NULL, *aud = NULL;
    char *h64 = NULL, *p64 = NULL, *s64 = NULL, *tok = NULL;
    uint8_t *sig = NULL;
    size_t siglen = 0, n;
    sg_spiffeid id;
    int rc;

    if (key == NULL || c == NULL || token == NULL || (unsigned)alg >= NALGS)
        return sg_err_set(err, SG_EINVAL, "JWT sign: missing key, claims or alg");
    if (kid == NULL || kid[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "JWT sign: a kid is required");
    if (c->sub == NULL)
        return sg_err_set(err, SG_EINVAL, "JWT sign: no sub");
    if ((rc = sg_spiffeid_parse(c->sub, &id, err)) < 0)
        return rc;
    if (c->naud == 0 || c->aud == NULL)
        return sg_err_set(err, SG_EINVAL, "JWT sign: at least one audience is required");
    for (size_t i = 0; i < c->naud; i++)
        if (c->aud[i] == NULL || c->aud[i][0] == '\0')
            return sg_err_set(err, SG_EINVAL, "JWT sign: audience %zu is empty", i);
    if (c->exp <= c->iat || c->exp <= 0)
        return sg_err_set(err, SG_EINVAL, "JWT sign: exp %lld is not after iat %lld",
                          (long long)c->exp, (long long)c->iat);
    if ((rc = key_fits_alg(key, alg, err)) < 0)
        return rc;

    hdr = json_pack("{s:s,s:s,s:s}", "alg", ALGS[alg].name, "kid", kid, "typ", "JWT");
    if (c->naud == 1) {
        aud = json_string(c->aud[0]);
    } else {
        aud = json_array();
        for (size_t i = 0; aud != NULL && i < c->naud; i++)
            if (json_array_append_new(aud, json_string(c->aud[i])) < 0) {
                json_decref(aud);
                aud = NULL;
            }
    }
    pl = json_object();
    if (hdr == NULL || aud == NULL || pl == NULL || json_object_set_new(pl, "aud", aud) < 0 ||
        json_object_set_new(pl, "exp", json_integer((json_int_t)c->exp)) < 0 ||
        json_object_set_new(pl, "iat", json_integer((json_int_t)c->iat)) < 0 ||
        (c->iss != NULL && json_object_set_new(pl, "iss", json_string(c->iss)) < 0) ||
        json_object_set_new(pl, "sub", json_string(c->sub)) < 0) {
        /* json_string gives NULL for text that is not UTF-8. */
        rc = sg_err_set(err, SG_EINVAL, "JWT sign: kid, audience or iss is not valid UTF-8");
        if (hdr == NULL || pl == NULL)
            json_decref(aud);
        goto done;
    }
    if ((rc = b64url_json(hdr, &h64, err)) < 0 || (rc = b64url_json(pl, &p64, err)) < 0)
        goto done;
    n = strlen(h64) + 1 + strlen(p64);
    tok = malloc(n + 1);
    if (tok == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "JWT: out of memory");
        goto done;
    }
    snprintf(tok, n + 1, "%s.%s", h64, p64);
    if ((rc = sign_jose(key, alg, tok, n, &sig, &siglen, err)) < 0 ||
        (rc = sg_bundle_b64_encode(sig, siglen, true, &s64, err)) < 0)
        goto done;
    size_t slen = strlen(s64);
    if (n + 1 + slen > SG_JWT_MAX_LEN) {
        rc = sg_err_set(err, SG_EINVAL, "JWT sign: the token would be %zu bytes (limit %d)",
                        n + 1 + slen, SG_JWT_MAX_LEN);
        goto done;
    }
    char *full = realloc(tok, n + 1 + slen + 1);
    if (full == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "JWT: out of memory");
        goto done;
    }
    tok = full;
    tok[n] = '.';
    memcpy(tok + n + 1, s64, slen + 1);
    *token = tok;
    tok = NULL;
done:
    json_decref(hdr);
    json_decref(pl);
    free(h64);
    free(p64);
    free(s64);
    free(sig);
    free(tok);
    return rc;
}

/* ---- validation ---- */

void sg_jwt_validated_cleanup(sg_jwt_validated *v)
{
    if (v == NULL)
        return;
    free(v->spiffe_id);
    free(v->claims_json);
    memset(v, 0, sizeof *v);
}

/* Decodes base64url part what of the token into a JSON object. */
static int decode_part(const char *s, size_t len, const char *what, json_t **out, sg_err *err)
{
    uint8_t *d = NULL;
    size_t dlen = 0;
    json_error_t jerr;
    json_t *o;
    sg_err e;

    if (len == 0)
        return sg_err_set(err, SG_EINVAL, "JWT %s is empty", what);
    if (sg_bundle_b64_decode(s, len, true, &d, &dlen, &e) < 0)
        return sg_err_set(err, SG_EINVAL, "JWT %s is not base64url: %.120s", what, e.msg);
    o = json_loadb((const char *)d, dlen, JSON_REJECT_DUPLICATES, &jerr);
    free(d);
    if (o == NULL)
        return sg_err_set(err, SG_EINVAL, "JWT %s is not valid JSON: %.100s", what, jerr.text);
    if (!json_is_object(o)) {
        json_decref(o);
        return sg_err_set(err, SG_EINVAL, "JWT %s is not a JSON object", what);
    }
    *out = o;
    return 0;
}

/*
 * A NumericDate claim (RFC 7519 2: seconds, possibly fractional) as whole
 * seconds. 1 when present, 0 when absent, SG_EINVAL when not a number in range.
 */
static int numeric_date(json_t *pl, const char *name, int64_t *out, sg_err *err)
{
    json_t *v = json_object_get(pl, name);

    if (v == NULL)
        return 0;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (isfinite(d) && d > -4e18 && d < 4e18) {
            *out = (int64_t)d; /* truncation; whole seconds are enough */
            return 1;
        }
    }
    return sg_err_set(err, SG_EINVAL, "JWT claim \"%s\" is not a NumericDate", name);
}

static int check_header(json_t *hdr, sg_jwt_alg *alg, const char **kid, sg_err *err)
{
    const char *name;
    json_t *v, *a, *t, *k;
    char q[48];

    /* JWT-SVID 2: no header parameter beyond alg, kid and typ. */
    json_object_foreach(hdr, name, v)
    {
        if (strcmp(name, "alg") != 0 && strcmp(name, "kid") != 0 && strcmp(name, "typ") != 0)
            return sg_err_set(err, SG_EINVAL, "JWT header parameter \"%s\" is not allowed",
                              quote(name, 32, q, sizeof q));
    }
    a = json_object_get(hdr, "alg");
    if (!json_is_string(a))
        return sg_err_set(err, SG_EINVAL, "JWT header has %s alg",
                          a == NULL ? "no" : "a non-string");
    if (strcmp(json_string_value(a), "none") == 0)
        return sg_err_set(err, SG_EINVAL, "JWT alg \"none\" is not allowed");
    if (sg_jwt_alg_parse(json_string_value(a), alg, NULL) < 0)
        return sg_err_set(err, SG_EINVAL,
                          "JWT alg \"%s\" is not allowed (ES256/384/512, RS256/384/512, "
                          "PS256/384/512)",
                          quote(json_string_value(a), 16, q, sizeof q));
    t = json_object_get(hdr, "typ");
    if (t != NULL && (!json_is_string(t) || (strcmp(json_string_value(t), "JWT") != 0 &&
                                             strcmp(json_string_value(t), "JOSE") != 0)))
        return sg_err_set(err, SG_EINVAL, "JWT typ \"%s\" is not allowed (JWT or JOSE)",
                          json_is_string(t) ? quote(json_string_value(t), 16, q, sizeof q)
                                            : "(not a string)");
    k = json_object_get(hdr, "kid");
    if (!json_is_string(k) || json_string_length(k) == 0)
        return sg_err_set(err, SG_EINVAL, "JWT header has %s kid",
                          k == NULL ? "no" : "an empty or non-string");
    *kid = json_string_value(k);
    return 0;
}

static int check_audience(json_t *pl, const char *audience, sg_err *err)
{
    json_t *aud = json_object_get(pl, "aud"), *v;
    char q[72];
    size_t i;

    if (json_is_string(aud)) {
        if (strcmp(json_string_value(aud), audience) == 0)
            return 0;
    } else if (json_is_array(aud) && json_array_size(aud) > 0) {
        bool found = false;
        json_array_foreach(aud, i, v)
        {
            if (!json_is_string(v))
                return sg_err_set(err, SG_EINVAL, "JWT aud[%zu] is not a string", i);
            if (strcmp(json_string_value(v), audience) == 0)
                found = true;
        }
        if (found)
            return 0;
    } else {
        return sg_err_set(err, SG_EINVAL, "JWT aud claim is %s",
                          aud == NULL ? "missing" : "not a string or a non-empty array");
    }
    return sg_err_set(err, SG_EINVAL, "JWT audience \"%s\" is not in the aud claim",
                      quote(audience, 64, q, sizeof q));
}

/*
 * DER SubjectPublicKeyInfo of an uncompressed point on each curve JWT-SVIDs
 * use (RFC 5480: id-ecPublicKey, the named curve, a BIT STRING with no
 * unused bits), up to the point itself.
 */
static const struct ec_spki {
    const char *group;
    uint8_t prefix[26];
    size_t prefix_len, point_len;
} EC_SPKI[] = {
    {"P-256",
     {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
      0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00},
     26,
     65},
    {"P-384",
     {0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
      0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00},
     23,
     97},
    {"P-521",
     {0x30, 0x81, 0x9b, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
      0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23, 0x03, 0x81, 0x86, 0x00},
     25,
     133},
};

/*
 * The public key of a bundle's SubjectPublicKeyInfo, NULL when it does not
 * parse. d2i_PUBKEY goes through OpenSSL 3's generic decoder chain, which
 * costs more than the signature check it precedes; an uncompressed EC point
 * on a known curve (every key a sigil server makes for ES256/384/512) is
 * imported from its bytes directly, which checks it lies on the curve just
 * the same. Anything else takes the generic path.
 */
static EVP_PKEY *spki_decode(const uint8_t *der, size_t len)
{
    const unsigned char *p = der;
    EVP_PKEY *pk = NULL;

    for (size_t i = 0; i < sizeof EC_SPKI / sizeof EC_SPKI[0]; i++) {
        const struct ec_spki *e = &EC_SPKI[i];
        if (len != e->prefix_len + e->point_len || memcmp(der, e->prefix, e->prefix_len) != 0 ||
            der[e->prefix_len] != 0x04)
            continue;
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
        OSSL_PARAM params[3];
        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME,
                                                     (char *)(uintptr_t)e->group, 0);
        params[1] = OSSL_PARAM_construct_octet_string(
            OSSL_PKEY_PARAM_PUB_KEY, (void *)(uintptr_t)(der + e->prefix_len), e->point_len);
        params[2] = OSSL_PARAM_construct_end();
        if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
            EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) != 1) {
            EVP_PKEY_free(pk);
            pk = NULL;
        }
        EVP_PKEY_CTX_free(ctx);
        ERR_clear_error();
        return pk;
    }
    return d2i_PUBKEY(NULL, &p, (long)len);
}

int sg_jwt_validate(const char *token, const char *audience, int64_t now,
                    sg_jwt_bundle_lookup lookup, void *ctx, sg_jwt_validated *out, sg_err *err)
{
    json_t *hdr = NULL, *pl = NULL, *subj;
    const char *dot1, *dot2, *kid = NULL;
    const sg_bundle *bundle;
    const sg_jwt_key *key;
    EVP_PKEY *pk = NULL;
    uint8_t *sig = NULL;
    size_t len, siglen = 0, parts = 1;
    sg_jwt_alg alg;
    sg_spiffeid id;
    int64_t exp = 0, t = 0;
    char q[72];
    sg_err e;
    int rc;

    if (out != NULL)
        memset(out, 0, sizeof *out);
    if (token == NULL || token[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "JWT token is empty");
    if (audience == NULL || audience[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "JWT audience is empty");
    if (lookup == NULL || out == NULL)
        return sg_err_set(err, SG_EINVAL, "JWT validate: no bundle lookup or output");
    len = strnlen(token, SG_JWT_MAX_LEN + 1);
    if (len > SG_JWT_MAX_LEN)
        return sg_err_set(err, SG_EINVAL, "JWT token is longer than %d bytes", SG_JWT_MAX_LEN);
    for (size_t i = 0; i < len; i++)
        if (token[i] == '.')
            parts++;
    if (parts != 3) {
        if (token[0] == '{')
            return sg_err_set(err, SG_EINVAL, "JWS JSON serialization is not supported");
        if (parts == 5)
            return sg_err_set(err, SG_EINVAL, "JWE tokens are not supported (5 parts)");
        return sg_err_set(err, SG_EINVAL, "JWT token is not a compact JWS (%zu parts, not 3)",
                          parts);
    }
    dot1 = strchr(token, '.');
    dot2 = strchr(dot1 + 1, '.');

    if ((rc = decode_part(token, (size_t)(dot1 - token), "header", &hdr, err)) < 0)
        goto done;
    if ((rc = check_header(hdr, &alg, &kid, err)) < 0)
        goto done;
    if ((rc = decode_part(dot1 + 1, (size_t)(dot2 - dot1 - 1), "payload", &pl, err)) < 0)
        goto done;
    if (dot2[1] == '\0') {
        rc = sg_err_set(err, SG_EINVAL, "JWT signature is empty");
        goto done;
    }
    if (sg_bundle_b64_decode(dot2 + 1, len - (size_t)(dot2 + 1 - token), true, &sig, &siglen, &e) <
        0) {
        rc = sg_err_set(err, SG_EINVAL, "JWT signature is not base64url: %.120s", e.msg);
        goto done;
    }

    subj = json_object_get(pl, "sub");
    if (!json_is_string(subj)) {
        rc = sg_err_set(err, SG_EINVAL, "JWT sub claim is %s",
                        subj == NULL ? "missing" : "not a string");
        goto done;
    }
    if (sg_spiffeid_parse(json_string_value(subj), &id, &e) < 0) {
        rc = sg_err_set(err, SG_EINVAL, "JWT sub is not a SPIFFE ID: %.150s", e.msg);
        goto done;
    }
    bundle = lookup(ctx, id.td);
    if (bundle == NULL) {
        rc = sg_err_set(err, SG_EINVAL, "no bundle for trust domain \"%s\" of the JWT sub",
                        quote(id.td, 64, q, sizeof q));
        goto done;
    }
    key = sg_bundle_find_jwt_key(bundle, kid);
    if (key == NULL) {
        char qk[72];
        rc = sg_err_set(err, SG_EINVAL, "JWT kid \"%s\" is not in the bundle of \"%s\"",
                        quote(kid, 64, qk, sizeof qk), quote(id.td, 64, q, sizeof q));
        goto done;
    }
    if (key->spki.data != NULL && key->spki.len > 0 && key->spki.len < 65536)
        pk = spki_decode(key->spki.data, key->spki.len);
    if (pk == NULL) {
        ERR_clear_error();
        rc = sg_err_set(err, SG_EINVAL, "JWT kid \"%s\": the bundle's key does not parse",
                        quote(kid, 64, q, sizeof q));
        goto done;
    }
    if (key_fits_alg(pk, alg, &e) < 0) {
        rc = sg_err_set(err, SG_EINVAL, "JWT kid \"%s\": %.150s", quote(kid, 64, q, sizeof q),
                        e.msg);
        goto done;
    }
    if (!verify_jose(pk, alg, token, (size_t)(dot2 - token), sig, siglen)) {
        rc = sg_err_set(err, SG_EINVAL, "JWT signature is invalid (alg %s, kid \"%s\")",
                        ALGS[alg].name, quote(kid, 64, q, sizeof q));
        goto done;
    }

    if ((rc = check_audience(pl, audience, err)) < 0)
        goto done;
    if ((rc = numeric_date(pl, "exp", &exp, err)) < 0)
        goto done;
    if (rc == 0) {
        rc = sg_err_set(err, SG_EINVAL, "JWT has no exp claim");
        goto done;
    }
    if (exp <= now) {
        rc = sg_err_set(err, SG_EINVAL, "JWT has expired (exp %lld, now %lld)", (long long)exp,
                        (long long)now);
        goto done;
    }
    if ((rc = numeric_date(pl, "nbf", &t, err)) < 0)
        goto done;
    if (rc == 1 && t > now + SG_JWT_SKEW) {
        rc = sg_err_set(err, SG_EINVAL, "JWT is not valid yet (nbf %lld, now %lld)", (long long)t,
                        (long long)now);
        goto done;
    }
    if ((rc = numeric_date(pl, "iat", &t, err)) < 0)
        goto done;
    if (rc == 1 && t > now + SG_JWT_SKEW) {
        rc = sg_err_set(err, SG_EINVAL, "JWT was issued in the future (iat %lld, now %lld)",
                        (long long)t, (long long)now);
        goto done;
    }

    out->spiffe_id = strdup(id.str);
    out->claims_json = json_dumps(pl, JSON_COMPACT);
    out->exp = exp;
    if (out->spiffe_id == NULL || out->claims_json == NULL) {
        sg_jwt_validated_cleanup(out);
        rc = sg_err_set(err, SG_ENOMEM, "JWT: out of memory");
        goto done;
    }
    rc = 0;
done:
    EVP_PKEY_free(pk);
    free(sig);
    json_decref(hdr);
    json_decref(pl);
    return rc;
}
