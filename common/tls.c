/*
 * TLS credentials for the node API on gRPC core 1.51.
 *
 * Server: the grpc_ssl_* credentials with a config fetcher. gRPC calls the
 * fetcher on its own threads for every handshake; it returns a new config
 * only when the identity or bundle changed since that credentials object
 * last saw them, so an update reaches new handshakes without files.
 *
 * Client: the grpc_tls_* credentials with a static provider and an external
 * verifier. gRPC first verifies the chain against the bundle, then the
 * verifier requires exactly one URI SAN equal to the expected server ID.
 * Host checks are off: the server has a SPIFFE ID, not a host name.
 */
#include "common/tls.h"

#include "common/log.h"

#include <grpc/support/alloc.h>
#include <grpc/support/string_util.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* State of one credentials object: which generation it has been served. */
typedef struct sg_tls_fetch {
    struct sg_tls_fetch *next;
    sg_tls_server *ts;
    uint64_t served; /* 0: nothing served yet */
} sg_tls_fetch;

struct sg_tls_server {
    pthread_mutex_t mu; /* guards everything below */
    char *key_pem;
    char *chain_pem;
    char *bundle_pem;
    uint64_t gen;          /* bumped on every update, starts at 1 */
    sg_tls_fetch *fetches; /* freed with the server state */
};

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p != NULL)
        memcpy(p, s, n);
    return p;
}

/* Frees a PEM string that may hold a private key. */
static void free_secret(char *s)
{
    if (s != NULL) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

/* Counts the certificates in pem; negative when a block does not parse. */
static int count_certs(const char *pem, X509 **first)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    int n = 0;
    if (bio == NULL)
        return -1;
    for (;;) {
        X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (x == NULL)
            break;
        if (n == 0 && first != NULL)
            *first = x;
        else
            X509_free(x);
        n++;
    }
    unsigned long e = ERR_peek_last_error();
    /* Running out of input is the normal end; anything else is damage. */
    if (e != 0 && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE))
        n = -1;
    ERR_clear_error();
    BIO_free(bio);
    if (n < 0 && first != NULL && *first != NULL) {
        X509_free(*first);
        *first = NULL;
    }
    return n;
}

/* Checks that key, chain and bundle parse and that the key matches the leaf. */
static int check_identity(const char *key_pem, const char *chain_pem, const char *bundle_pem,
                          sg_err *err)
{
    X509 *leaf = NULL;
    if (key_pem == NULL || chain_pem == NULL)
        return sg_err_set(err, SG_EINVAL, "TLS identity needs both a key and a certificate chain");
    int n = count_certs(chain_pem, &leaf);
    if (n <= 0) {
        X509_free(leaf);
        return sg_err_set(err, SG_EINVAL, "TLS certificate chain is not valid PEM (%s)",
                          n < 0 ? "a certificate does not parse" : "no certificate found");
    }
    if (bundle_pem != NULL) {
        int nb = count_certs(bundle_pem, NULL);
        if (nb <= 0) {
            X509_free(leaf);
            return sg_err_set(err, SG_EINVAL, "TLS trust bundle is not valid PEM (%s)",
                              nb < 0 ? "a certificate does not parse" : "no certificate found");
        }
    }
    BIO *bio = BIO_new_mem_buf(key_pem, -1);
    EVP_PKEY *key = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (key == NULL) {
        X509_free(leaf);
        return sg_err_ssl(err, "TLS private key is not a valid PEM key");
    }
    int match = X509_check_private_key(leaf, key);
    EVP_PKEY_free(key);
    X509_free(leaf);
    ERR_clear_error();
    if (match != 1)
        return sg_err_set(err, SG_EINVAL,
                          "TLS private key does not match the first certificate of the chain");
    return 0;
}

/* ------------------------------------------------------------- server */

int sg_tls_server_new(sg_tls_server **out, const char *key_pem, const char *chain_pem,
                      const char *bundle_pem, sg_err *err)
{
    if (bundle_pem == NULL)
        return sg_err_set(err, SG_EINVAL, "TLS server needs a trust bundle");
    int rc = check_identity(key_pem, chain_pem, bundle_pem, err);
    if (rc != 0)
        return rc;
    sg_tls_server *ts = calloc(1, sizeof *ts);
    if (ts == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory creating TLS server state");
    ts->key_pem = dup_str(key_pem);
    ts->chain_pem = dup_str(chain_pem);
    ts->bundle_pem = dup_str(bundle_pem);
    if (ts->key_pem == NULL || ts->chain_pem == NULL || ts->bundle_pem == NULL) {
        free_secret(ts->key_pem);
        free(ts->chain_pem);
        free(ts->bundle_pem);
        free(ts);
        return sg_err_set(err, SG_ENOMEM, "out of memory creating TLS server state");
    }
    pthread_mutex_init(&ts->mu, NULL);
    ts->gen = 1;
    *out = ts;
    return 0;
}

/* Runs on gRPC threads at port setup and before every handshake. */
static grpc_ssl_certificate_config_reload_status
fetch_config(void *user, grpc_ssl_server_certificate_config **cfg)
{
    sg_tls_fetch *f = user;
    sg_tls_server *ts = f->ts;
    grpc_ssl_certificate_config_reload_status rs = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;

    pthread_mutex_lock(&ts->mu);
    if (f->served != ts->gen) {
        grpc_ssl_pem_key_cert_pair pair = {.private_key = ts->key_pem, .cert_chain = ts->chain_pem};
        *cfg = grpc_ssl_server_certificate_config_create(ts->bundle_pem, &pair, 1);
        if (*cfg != NULL) {
            f->served = ts->gen;
            rs = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW;
        } else {
            rs = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
        }
    }
    pthread_mutex_unlock(&ts->mu);
    return rs;
}

grpc_server_credentials *sg_tls_server_credentials(sg_tls_server *ts)
{
    sg_tls_fetch *f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    f->ts = ts;
    pthread_mutex_lock(&ts->mu);
    f->next = ts->fetches;
    ts->fetches = f;
    pthread_mutex_unlock(&ts->mu);
    grpc_ssl_server_credentials_options *o =
        grpc_ssl_server_credentials_create_options_using_config_fetcher(
            GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY, fetch_config, f);
    if (o == NULL)
        return NULL;
    return grpc_ssl_server_credentials_create_with_options(o);
}

int sg_tls_server_update(sg_tls_server *ts, const char *key_pem, const char *chain_pem,
                         const char *bundle_pem, sg_err *err)
{
    if (bundle_pem == NULL)
        return sg_err_set(err, SG_EINVAL, "TLS server needs a trust bundle");
    int rc = check_identity(key_pem, chain_pem, bundle_pem, err);
    if (rc != 0)
        return rc;
    char *k = dup_str(key_pem), *c = dup_str(chain_pem), *b = dup_str(bundle_pem);
    if (k == NULL || c == NULL || b == NULL) {
        free_secret(k);
        free(c);
        free(b);
        return sg_err_set(err, SG_ENOMEM, "out of memory updating TLS server state");
    }
    pthread_mutex_lock(&ts->mu);
    char *ok = ts->key_pem, *oc = ts->chain_pem, *ob = ts->bundle_pem;
    ts->key_pem = k;
    ts->chain_pem = c;
    ts->bundle_pem = b;
    ts->gen++;
    pthread_mutex_unlock(&ts->mu);
    free_secret(ok);
    free(oc);
    free(ob);
    return 0;
}

void sg_tls_server_free(sg_tls_server *ts)
{
    if (ts == NULL)
        return;
    while (ts->fetches != NULL) {
        sg_tls_fetch *f = ts->fetches;
        ts->fetches = f->next;
        free(f);
    }
    free_secret(ts->key_pem);
    free(ts->chain_pem);
    free(ts->bundle_pem);
    pthread_mutex_destroy(&ts->mu);
    free(ts);
}

/* ------------------------------------------------------------- client */

typedef struct sg_tls_verifier {
    grpc_tls_certificate_verifier_external ext; /* first: user_data points here */
    char *expected_id;                          /* immutable after creation */
} sg_tls_verifier;

/* Rejects a handshake: logs why and hands gRPC a gpr-allocated reason. */
static int reject(grpc_status_code *sync_status, char **sync_error_details, const char *why)
{
    sg_log_warn("tls: rejected server certificate: %s", why);
    *sync_status = GRPC_STATUS_UNAUTHENTICATED;
    *sync_error_details = gpr_strdup(why);
    return 1;
}

/* Runs synchronously on whichever thread drives the handshake. */
static int verify_server_id(void *user, grpc_tls_custom_verification_check_request *req,
                            grpc_tls_on_custom_verification_check_done_cb cb, void *cb_arg,
                            grpc_status_code *sync_status, char **sync_error_details)
{
    const sg_tls_verifier *v = user;
    char why[512];
    (void)cb;
    (void)cb_arg;

    size_t n = req->peer_info.san_names.uri_names_size;
    if (n != 1) {
        snprintf(why, sizeof why, "server certificate has %zu URI SANs, want exactly one (%s)", n,
                 v->expected_id);
        return reject(sync_status, sync_error_details, why);
    }
    const char *got = req->peer_info.san_names.uri_names[0];
    if (got == NULL || strcmp(got, v->expected_id) != 0) {
        snprintf(why, sizeof why, "server SPIFFE ID mismatch: got \"%.200s\", want \"%.200s\"",
                 got != NULL ? got : "", v->expected_id);
        return reject(sync_status, sync_error_details, why);
    }
    *sync_status = GRPC_STATUS_OK;
    *sync_error_details = NULL;
    return 1;
}

static void verify_cancel(void *user, grpc_tls_custom_verification_check_request *req)
{
    (void)user;
    (void)req;
}

static void verify_destruct(void *user)
{
    sg_tls_verifier *v = user;
    free(v->expected_id);
    free(v);
}

grpc_channel_credentials *sg_tls_channel_credentials(const char *bundle_pem, const char *key_pem,
                                                     const char *chain_pem, const char *expected_id,
                                                     sg_err *err)
{
    if (expected_id == NULL || strncmp(expected_id, "spiffe://", 9) != 0) {
        sg_err_set(err, SG_EINVAL, "expected server ID \"%.200s\" is not a SPIFFE ID",
                   expected_id != NULL ? expected_id : "");
        return NULL;
    }
    bool identity = key_pem != NULL || chain_pem != NULL;
    if (identity) {
        if (check_identity(key_pem, chain_pem, bundle_pem, err) != 0)
            return NULL;
    } else if (bundle_pem != NULL) {
        int nb = count_certs(bundle_pem, NULL);
        if (nb <= 0) {
            sg_err_set(err, SG_EINVAL, "TLS trust bundle is not valid PEM (%s)",
                       nb < 0 ? "a certificate does not parse" : "no certificate found");
            return NULL;
        }
    }

    sg_tls_verifier *v = calloc(1, sizeof *v);
    if (v == NULL || (v->expected_id = dup_str(expected_id)) == NULL) {
        free(v);
        sg_err_set(err, SG_ENOMEM, "out of memory creating TLS credentials");
        return NULL;
    }
    v->ext.user_data = v;
    v->ext.verify = verify_server_id;
    v->ext.cancel = verify_cancel;
    v->ext.destruct = verify_destruct;

    grpc_tls_credentials_options *o = grpc_tls_credentials_options_create();
    grpc_tls_identity_pairs *ids = NULL;
    if (identity) {
        ids = grpc_tls_identity_pairs_create();
        grpc_tls_identity_pairs_add_pair(ids, key_pem, chain_pem);
    }
    if (bundle_pem != NULL || ids != NULL) {
        grpc_tls_certificate_provider *p =
            grpc_tls_certificate_provider_static_data_create(bundle_pem, ids);
        grpc_tls_credentials_options_set_certificate_provider(o, p);
        grpc_tls_certificate_provider_release(p);
        if (bundle_pem != NULL)
            grpc_tls_credentials_options_watch_root_certs(o);
        if (ids != NULL)
            grpc_tls_credentials_options_watch_identity_key_cert_pairs(o);
    }
    /* Insecure bootstrap: no chain check, but the ID is still checked. */
    if (bundle_pem == NULL)
        grpc_tls_credentials_options_set_verify_server_cert(o, 0);
    grpc_tls_credentials_options_set_check_call_host(o, 0);
    grpc_tls_certificate_verifier *cv = grpc_tls_certificate_verifier_external_create(&v->ext);
    grpc_tls_credentials_options_set_certificate_verifier(o, cv);
    grpc_tls_certificate_verifier_release(cv);
    grpc_channel_credentials *creds = grpc_tls_credentials_create(o);
    if (creds == NULL)
        sg_err_set(err, SG_ECRYPTO, "gRPC refused the TLS channel options");
    return creds;
}
