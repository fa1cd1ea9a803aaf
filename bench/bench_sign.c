/*
 * Signing micro-benchmarks: the cost of a raw ECDSA P-256 signature and of
 * building and signing a complete leaf certificate three ways (the obvious
 * X509 API path through an EVP_PKEY, the X509 API with a raw
 * SubjectPublicKeyInfo, and sg_ca_sign_svid's direct DER path), and the
 * JWT-SVID path: an ES256 token signed with sg_jwt_sign and validated with
 * sg_jwt_validate against a one-key bundle, next to the raw ECDSA P-256
 * signature and verification of a 32-byte digest they wrap. Each loop runs
 * single-threaded for about two seconds, then sg_ca_sign_svid runs on two
 * threads. Prints one `name value unit` line per measurement.
 *
 * Usage: bench_sign [seconds-per-loop]
 */
#include "common/bundle.h"
#include "common/jwt.h"
#include "common/key.h"
#include "common/x509.h"
#include "server/ca.h"

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SPIFFE_ID "spiffe://example.org/ns/default/sa/web"

typedef struct raw_consts {
    X509_EXTENSION *ku, *eku, *bc, *akid;
} raw_consts;

typedef struct bench_env {
    EVP_PKEY *ca_key;
    EVP_PKEY_CTX *sign_ctx; /* reused by the bare-signature loop */
    raw_consts consts;      /* constant extensions for the raw-SPKI loop */
    X509 *ca_cert;
    sg_ca *ca;
    uint8_t *spki; /* a workload key's SubjectPublicKeyInfo */
    size_t spki_len;
    double seconds;
    /* JWT loops */
    EVP_PKEY_CTX *verify_ctx; /* reused by the bare-verification loop */
    uint8_t verify_sig[128];  /* a signature of the 32-byte digest below */
    size_t verify_siglen;
    char jwt_kid[33];
    char *jwt_token;      /* signed once, validated by the validate loop */
    sg_bundle jwt_bundle; /* example.org with the CA key as its one JWT key */
} bench_env;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_sign: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

/* Runs fn until env->seconds have passed; returns operations per second. */
static double run_loop(bench_env *env, int (*fn)(bench_env *))
{
    double start = now_s(), end = start + env->seconds, t;
    long n = 0;

    do {
        for (int i = 0; i < 16; i++) {
            if (fn(env) != 0)
                die("benchmark iteration");
        }
        n += 16;
        t = now_s();
    } while (t < end);
    return (double)n / (t - start);
}

static int op_ecdsa_sign(bench_env *env)
{
    uint8_t msg[100], sig[128];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    size_t len = 32 + (size_t)(rand() % 69);
    int ok;

    memset(msg, 0x5a, sizeof msg);
    ok = m != NULL && EVP_DigestSignInit(m, NULL, EVP_sha256(), NULL, env->ca_key) == 1 &&
         EVP_DigestSign(m, sig, &siglen, msg, len) == 1;
    EVP_MD_CTX_free(m);
    return ok ? 0 : -1;
}

/* The bare signature on a reused EVP_PKEY_CTX: the floor for any leaf loop. */
static int op_ecdsa_pkey_sign(bench_env *env)
{
    EVP_PKEY_CTX *c = env->sign_ctx;
    uint8_t md[32], sig[128];
    size_t siglen = sizeof sig;

    if (c == NULL) {
        c = env->sign_ctx = EVP_PKEY_CTX_new_from_pkey(NULL, env->ca_key, NULL);
        if (c == NULL || EVP_PKEY_sign_init(c) != 1 ||
            EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) != 1)
            return -1;
    }
    memset(md, 0x11, sizeof md);
    return EVP_PKEY_sign(c, sig, &siglen, md, sizeof md) == 1 ? 0 : -1;
}

/* The bare verification on a reused EVP_PKEY_CTX: the floor for validating a token. */
static int op_ecdsa_pkey_verify(bench_env *env)
{
    EVP_PKEY_CTX *c = env->verify_ctx;
    uint8_t md[32];

    if (c == NULL) {
        EVP_PKEY_CTX *s = EVP_PKEY_CTX_new_from_pkey(NULL, env->ca_key, NULL);
        int ok;
        memset(md, 0x22, sizeof md);
        env->verify_siglen = sizeof env->verify_sig;
        ok = s != NULL && EVP_PKEY_sign_init(s) == 1 &&
             EVP_PKEY_CTX_set_signature_md(s, EVP_sha256()) == 1 &&
             EVP_PKEY_sign(s, env->verify_sig, &env->verify_siglen, md, sizeof md) == 1;
        EVP_PKEY_CTX_free(s);
        c = env->verify_ctx = EVP_PKEY_CTX_new_from_pkey(NULL, env->ca_key, NULL);
        if (!ok || c == NULL || EVP_PKEY_verify_init(c) != 1 ||
            EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) != 1)
            return -1;
    }
    memset(md, 0x22, sizeof md);
    return EVP_PKEY_verify(c, env->verify_sig, env->verify_siglen, md, sizeof md) == 1 ? 0 : -1;
}

static const char *const JWT_AUD[] = {"bench-audience"};

static int op_jwt_sign(bench_env *env)
{
    int64_t now = (int64_t)time(NULL);
    sg_jwt_claims c = {SPIFFE_ID, JWT_AUD, 1, now, now + 300, NULL};
    char *token = NULL;
    int rc = sg_jwt_sign(env->ca_key, SG_JWT_ES256, env->jwt_kid, &c, &token, NULL);

    free(token);
    return rc;
}

static const sg_bundle *jwt_lookup(void *ctx, const char *trust_domain)
{
    bench_env *env = ctx;
    return strcmp(trust_domain, env->jwt_bundle.trust_domain) == 0 ? &env->jwt_bundle : NULL;
}

static int op_jwt_validate(bench_env *env)
{
    sg_jwt_validated v;
    int rc =
        sg_jwt_validate(env->jwt_token, JWT_AUD[0], (int64_t)time(NULL), jwt_lookup, env, &v, NULL);

    sg_jwt_validated_cleanup(&v);
    return rc;
}

/* Signs the token the validate loop checks, and the one-key bundle it checks against. */
static void jwt_setup(bench_env *env)
{
    int64_t now = (int64_t)time(NULL);
    sg_jwt_claims c = {SPIFFE_ID, JWT_AUD, 1, now, now + 3600, NULL};
    sg_jwt_validated v;
    sg_err err;

    env->jwt_bundle.trust_domain = strdup("example.org");
    env->jwt_bundle.jwt = calloc(1, sizeof *env->jwt_bundle.jwt);
    if (env->jwt_bundle.trust_domain == NULL || env->jwt_bundle.jwt == NULL)
        die("allocation");
    env->jwt_bundle.njwt = 1;
    if (sg_jwt_kid(env->ca_key, env->jwt_kid, &err) != 0 ||
        (env->jwt_bundle.jwt[0].kid = strdup(env->jwt_kid)) == NULL ||
        sg_key_to_spki_der(env->ca_key, &env->jwt_bundle.jwt[0].spki.data,
                           &env->jwt_bundle.jwt[0].spki.len, &err) != 0 ||
        sg_jwt_sign(env->ca_key, SG_JWT_ES256, env->jwt_kid, &c, &env->jwt_token, &err) != 0 ||
        sg_jwt_validate(env->jwt_token, JWT_AUD[0], now, jwt_lookup, env, &v, &err) != 0) {
        fprintf(stderr, "bench_sign: JWT setup: %s\n", err.msg);
        exit(1);
    }
    sg_jwt_validated_cleanup(&v);
}

static int add_conf_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *v)
{
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, v);
    int ok = e != NULL && X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok ? 0 : -1;
}

/* Leaf fields common to both X509 API loops; the public key is set by the caller. */
static X509 *leaf_skeleton(bench_env *env)
{
    X509 *x = X509_new();
    X509_NAME *n = X509_NAME_new();
    BIGNUM *bn = BN_new();

    if (x == NULL || n == NULL || bn == NULL || !X509_set_version(x, 2) ||
        !BN_rand(bn, 128, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) ||
        !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) ||
        !X509_NAME_add_entry_by_txt(n, "C", MBSTRING_ASC, (const unsigned char *)"US", -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC, (const unsigned char *)"SPIRE", -1, -1,
                                    0) ||
        !X509_set_subject_name(x, n) ||
        !X509_set_issuer_name(x, X509_get_subject_name(env->ca_cert)) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -10) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), 3600))
        die("leaf skeleton");
    BN_free(bn);
    X509_NAME_free(n);
    return x;
}

/* The obvious path: decode the key into an EVP_PKEY, X509_set_pubkey, conf extensions, X509_sign.
 */
static int op_leaf_naive(bench_env *env)
{
    const unsigned char *p = env->spki;
    EVP_PKEY *k = d2i_PUBKEY(NULL, &p, (long)env->spki_len);
    X509 *x = leaf_skeleton(env);
    X509V3_CTX ctx;
    unsigned char *der = NULL;
    int rc = -1;

    if (k == NULL || !X509_set_pubkey(x, k))
        goto done;
    X509V3_set_ctx(&ctx, env->ca_cert, x, NULL, NULL, 0);
    if (add_conf_ext(x, &ctx, NID_key_usage, "critical,digitalSignature,keyAgreement") ||
        add_conf_ext(x, &ctx, NID_ext_key_usage, "serverAuth,clientAuth") ||
        add_conf_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE") ||
        add_conf_ext(x, &ctx, NID_subject_key_identifier, "hash") ||
        add_conf_ext(x, &ctx, NID_authority_key_identifier, "keyid:always") ||
        add_conf_ext(x, &ctx, NID_subject_alt_name, "URI:" SPIFFE_ID))
        goto done;
    if (X509_sign(x, env->ca_key, EVP_sha256()) <= 0 || i2d_X509(x, &der) <= 0)
        goto done;
    rc = 0;
done:
    OPENSSL_free(der);
    X509_free(x);
    EVP_PKEY_free(k);
    return rc;
}

/*
 * The fastest X509 API loop: raw SPKI via X509_PUBKEY_set0_param, constant
 * extensions built once, SKID hashed directly, X509_sign_ctx.
 */
static raw_consts *raw_consts_get(bench_env *env)
{
    raw_consts *c = &env->consts;
    X509V3_CTX ctx;

    if (c->ku == NULL) {
        X509V3_set_ctx(&ctx, env->ca_cert, NULL, NULL, NULL, 0);
        c->ku = X509V3_EXT_conf_nid(NULL, &ctx, NID_key_usage,
                                    "critical,digitalSignature,keyAgreement");
        c->eku = X509V3_EXT_conf_nid(NULL, &ctx, NID_ext_key_usage, "serverAuth,clientAuth");
        c->bc = X509V3_EXT_conf_nid(NULL, &ctx, NID_basic_constraints, "critical,CA:FALSE");
        c->akid = X509V3_EXT_conf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid:always");
        if (!c->ku || !c->eku || !c->bc || !c->akid)
            die("constant extensions");
    }
    return c;
}

static int op_leaf_raw_spki(bench_env *env)
{
    raw_consts *c = raw_consts_get(env);
    X509 *x = leaf_skeleton(env);
    const unsigned char *p = env->spki;
    X509_PUBKEY *tmp = d2i_X509_PUBKEY(NULL, &p, (long)env->spki_len); /* ASN.1 only, no decoder */
    ASN1_OBJECT *alg_obj;
    const void *pval;
    int ptype, klen;
    const unsigned char *kbits;
    unsigned char *kcopy, skid[20], *der = NULL;
    ASN1_OCTET_STRING *skid_os = ASN1_OCTET_STRING_new();
    GENERAL_NAMES *gens = GENERAL_NAMES_new();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    int rc = -1;

    (void)p;
    if (tmp == NULL || !X509_PUBKEY_get0_param(&alg_obj, &kbits, &klen, NULL, tmp))
        goto done;
    {
        const X509_ALGOR *a;
        X509_PUBKEY_get0_param(NULL, NULL, NULL, (X509_ALGOR **)&a, tmp);
        X509_ALGOR_get0(NULL, &ptype, &pval, a);
    }
    kcopy = OPENSSL_memdup(kbits, (size_t)klen);
    if (kcopy == NULL ||
        !X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(x), OBJ_dup(alg_obj), ptype,
                                ptype == V_ASN1_OBJECT ? OBJ_dup(pval) : NULL, kcopy, klen))
        goto done;
    SHA1(kbits, (size_t)klen, skid);
    if (!ASN1_OCTET_STRING_set(skid_os, skid, sizeof skid) || !ASN1_STRING_set(ia5, SPIFFE_ID, -1))
        goto done;
    GENERAL_NAME_set0_value(gn, GEN_URI, ia5);
    ia5 = NULL;
    sk_GENERAL_NAME_push(gens, gn);
    gn = NULL;
    if (!X509_add_ext(x, c->ku, -1) || !X509_add_ext(x, c->eku, -1) ||
        !X509_add_ext(x, c->bc, -1) ||
        !X509_add1_ext_i2d(x, NID_subject_key_identifier, skid_os, 0, 0) ||
        !X509_add_ext(x, c->akid, -1) || !X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, 0))
        goto done;
    if (m == NULL || EVP_DigestSignInit(m, NULL, EVP_sha256(), NULL, env->ca_key) != 1 ||
        X509_sign_ctx(x, m) <= 0 || i2d_X509(x, &der) <= 0)
        goto done;
    rc = 0;
done:
    OPENSSL_free(der);
    EVP_MD_CTX_free(m);
    ASN1_IA5STRING_free(ia5);
    GENERAL_NAME_free(gn);
    GENERAL_NAMES_free(gens);
    ASN1_OCTET_STRING_free(skid_os);
    X509_PUBKEY_free(tmp);
    X509_free(x);
    return rc;
}

static int op_ca_sign_svid(bench_env *env)
{
    sg_ca_svid_params p = {SPIFFE_ID, NULL, 0, 3600};
    sg_ca_chain chain = {0};
    int rc = sg_ca_sign_svid(env->ca, &p, env->spki, env->spki_len, &chain, NULL);

    sg_ca_chain_cleanup(&chain);
    return rc;
}

typedef struct thread_arg {
    bench_env *env;
    double rate;
} thread_arg;

static void *thread_main(void *arg)
{
    thread_arg *t = arg;
    t->rate = run_loop(t->env, op_ca_sign_svid);
    return NULL;
}

static void check_leaf_verifies(bench_env *env)
{
    sg_ca_svid_params p = {SPIFFE_ID, NULL, 0, 3600};
    sg_ca_chain chain = {0};
    STACK_OF(X509) *roots = sk_X509_new_null();
    X509 *leaf = NULL;
    sg_err err;

    if (sg_ca_sign_svid(env->ca, &p, env->spki, env->spki_len, &chain, &err) != 0 ||
        sg_x509_from_der(chain.certs[0].data, chain.certs[0].len, &leaf, &err) != 0) {
        fprintf(stderr, "bench_sign: %s\n", err.msg);
        exit(1);
    }
    X509_up_ref(env->ca_cert);
    sk_X509_push(roots, env->ca_cert);
    if (sg_x509_verify_svid(leaf, NULL, roots, 0, NULL, &err) != 0) {
        fprintf(stderr, "bench_sign: signed SVID does not verify: %s\n", err.msg);
        exit(1);
    }
    X509_free(leaf);
    sk_X509_pop_free(roots, X509_free);
    sg_ca_chain_cleanup(&chain);
}

int main(int argc, char **argv)
{
    bench_env env = {0};
    sg_ca_options o = {0};
    sg_der *bundle = NULL;
    size_t nbundle = 0;
    EVP_PKEY *wk = NULL;
    pthread_t th[2];
    thread_arg ta[2];
    double r_raw, r_ca, r_psign, r_pverify, r_jsign, r_jval;
    sg_err err;

    env.seconds = argc > 1 ? strtod(argv[1], NULL) : 2.0;
    if (env.seconds <= 0)
        env.seconds = 2.0;
    o.trust_domain = "example.org";
    o.key_type = SG_KEY_EC_P256;
    o.ca_ttl_s = 86400;
    if (sg_ca_new(&env.ca, &o, &err) != 0 ||
        sg_ca_bundle_der(env.ca, &bundle, &nbundle, &err) != 0 ||
        sg_x509_from_der(bundle[0].data, bundle[0].len, &env.ca_cert, &err) != 0) {
        fprintf(stderr, "bench_sign: %s\n", err.msg);
        return 1;
    }
    /* The X509 API loops sign with a key of the same type under the CA's name. */
    if (sg_key_generate(SG_KEY_EC_P256, &env.ca_key, &err) != 0 ||
        sg_key_generate(SG_KEY_EC_P256, &wk, &err) != 0 ||
        sg_key_to_spki_der(wk, &env.spki, &env.spki_len, &err) != 0) {
        fprintf(stderr, "bench_sign: %s\n", err.msg);
        return 1;
    }
    check_leaf_verifies(&env);
    jwt_setup(&env);

    printf("ecdsa_p256_sign %.0f ops/s\n", run_loop(&env, op_ecdsa_sign));
    r_psign = run_loop(&env, op_ecdsa_pkey_sign);
    printf("ecdsa_p256_pkey_sign %.0f ops/s\n", r_psign);
    r_pverify = run_loop(&env, op_ecdsa_pkey_verify);
    printf("ecdsa_p256_pkey_verify %.0f ops/s\n", r_pverify);
    r_jsign = run_loop(&env, op_jwt_sign);
    printf("sg_jwt_sign_es256 %.0f ops/s\n", r_jsign);
    printf("sg_jwt_sign_es256_vs_pkey_sign %.2f ratio\n", r_jsign / r_psign);
    r_jval = run_loop(&env, op_jwt_validate);
    printf("sg_jwt_validate_es256 %.0f ops/s\n", r_jval);
    printf("sg_jwt_validate_us %.1f us/op\n", 1e6 / r_jval);
    printf("sg_jwt_validate_vs_pkey_verify %.2f ratio\n", r_jval / r_pverify);
    printf("leaf_naive_x509_set_pubkey %.0f ops/s\n", run_loop(&env, op_leaf_naive));
    r_raw = run_loop(&env, op_leaf_raw_spki);
    printf("leaf_raw_spki_x509 %.0f ops/s\n", r_raw);
    r_ca = run_loop(&env, op_ca_sign_svid);
    printf("sg_ca_sign_svid %.0f ops/s\n", r_ca);
    printf("sg_ca_sign_svid_us %.1f us/op\n", 1e6 / r_ca);
    for (int i = 0; i < 2; i++) {
        ta[i].env = &env;
        pthread_create(&th[i], NULL, thread_main, &ta[i]);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    printf("sg_ca_sign_svid_2threads %.0f ops/s\n", ta[0].rate + ta[1].rate);
    printf("sg_ca_sign_svid_vs_raw_spki %.2f ratio\n", r_ca / r_raw);

    for (size_t i = 0; i < nbundle; i++)
        sg_der_cleanup(&bundle[i]);
    free(bundle);
    OPENSSL_free(env.spki);
    EVP_PKEY_CTX_free(env.sign_ctx);
    EVP_PKEY_CTX_free(env.verify_ctx);
    free(env.jwt_token);
    sg_bundle_cleanup(&env.jwt_bundle);
    X509_EXTENSION_free(env.consts.ku);
    X509_EXTENSION_free(env.consts.eku);
    X509_EXTENSION_free(env.consts.bc);
    X509_EXTENSION_free(env.consts.akid);
    EVP_PKEY_free(wk);
    EVP_PKEY_free(env.ca_key);
    X509_free(env.ca_cert);
    sg_ca_free(env.ca);
    return 0;
}
