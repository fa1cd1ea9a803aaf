/*
 * Tests for common/tls.c: certificates are made with OpenSSL in the test,
 * a server on loopback TCP answers with the client certificate it saw.
 */
#include "common/rpc.h"
#include "common/tls.h"

#include "spiffe/workload.pb-c.h"
#include "test/runner.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#define SERVER_ID "spiffe://example.org/spire/server"
#define AGENT_ID  "spiffe://example.org/spire/agent/join_token/abc"
#define PATH      "/SpiffeWorkloadAPI/ValidateJWTSVID"

typedef struct tcert {
    EVP_PKEY *key;
    X509 *cert;
    char *key_pem;
    char *cert_pem;
} tcert;

static char *bio_string(BIO *bio)
{
    char *data;
    long n = BIO_get_mem_data(bio, &data);
    char *s = malloc((size_t)n + 1);
    ASSERT(s != NULL);
    memcpy(s, data, (size_t)n);
    s[n] = '\0';
    BIO_free(bio);
    return s;
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    ASSERT(e != NULL);
    ASSERT(X509_add_ext(x, e, -1) == 1);
    X509_EXTENSION_free(e);
}

/* Makes a CA (uri NULL) or a leaf with one URI SAN, signed by issuer or itself. */
static void make_cert(tcert *out, const char *name, const char *uri, const tcert *issuer)
{
    static long serial = 1000;
    out->key = EVP_EC_gen("P-256");
    ASSERT(out->key != NULL);
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), ++serial);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC, (const unsigned char *)name, -1, -1, 0);
    X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer->cert) : n);
    X509_set_pubkey(x, out->key);
    X509 *iss = issuer != NULL ? issuer->cert : x;
    if (uri == NULL) {
        add_ext(x, iss, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, iss, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        char san[256];
        snprintf(san, sizeof san, "URI:%s", uri);
        add_ext(x, iss, NID_basic_constraints, "critical,CA:FALSE");
        add_ext(x, iss, NID_key_usage, "critical,digitalSignature");
        add_ext(x, iss, NID_ext_key_usage, "serverAuth,clientAuth");
        add_ext(x, iss, NID_subject_alt_name, san);
    }
    ASSERT(X509_sign(x, issuer != NULL ? issuer->key : out->key, EVP_sha256()) > 0);
    out->cert = x;
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, x);
    out->cert_pem = bio_string(b);
    b = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(b, out->key, NULL, NULL, 0, NULL, NULL);
    out->key_pem = bio_string(b);
}

static void free_cert(tcert *c)
{
    EVP_PKEY_free(c->key);
    X509_free(c->cert);
    free(c->key_pem);
    free(c->cert_pem);
}

static struct {
    tcert ca, server, agent, wrong, foreign_ca, foreign_server;
} pki;

static void make_pki(void)
{
    make_cert(&pki.ca, "ca", NULL, NULL);
    make_cert(&pki.server, "server", SERVER_ID, &pki.ca);
    make_cert(&pki.agent, "agent", AGENT_ID, &pki.ca);
    make_cert(&pki.wrong, "wrong", "spiffe://example.org/not/the/server", &pki.ca);
    make_cert(&pki.foreign_ca, "foreign", NULL, NULL);
    make_cert(&pki.foreign_server, "fserver", SERVER_ID, &pki.foreign_ca);
}

static void free_pki(void)
{
    free_cert(&pki.ca);
    free_cert(&pki.server);
    free_cert(&pki.agent);
    free_cert(&pki.wrong);
    free_cert(&pki.foreign_ca);
    free_cert(&pki.foreign_server);
}

/* Answers with the client certificate PEM the server saw ("" for none). */
static void h_peer_cert(sg_rpc_call *call, const ProtobufCMessage *msg, void *user)
{
    (void)msg;
    (void)user;
    const char *pem = sg_rpc_call_peer_cert_pem(call);
    ValidateJWTSVIDResponse resp = VALIDATE_JWTSVIDRESPONSE__INIT;
    resp.spiffe_id = (char *)(pem != NULL ? pem : "");
    sg_rpc_call_send(call, &resp.base);
    sg_rpc_call_finish(call, GRPC_STATUS_OK, NULL);
}

typedef struct tfix {
    sg_tls_server *ts;
    sg_rpc_server *srv;
    char target[64];
} tfix;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    ASSERT(fd >= 0);
    ASSERT_OK(bind(fd, (struct sockaddr *)&a, sizeof a));
    ASSERT_OK(getsockname(fd, (struct sockaddr *)&a, &len));
    close(fd);
    return ntohs(a.sin_port);
}

static void tfix_start(tfix *f, const tcert *id)
{
    sg_err err;
    grpc_init();
    ASSERT_OK(sg_tls_server_new(&f->ts, id->key_pem, id->cert_pem, pki.ca.cert_pem, &err));
    ASSERT_OK(sg_rpc_server_new(&f->srv, NULL, &err));
    ASSERT_OK(sg_rpc_server_add_method(f->srv, &spiffe_workload_api__descriptor, "ValidateJWTSVID",
                                       SG_RPC_UNARY, h_peer_cert, NULL, &err));
    snprintf(f->target, sizeof f->target, "127.0.0.1:%d", free_port());
    grpc_server_credentials *creds = sg_tls_server_credentials(f->ts);
    ASSERT(creds != NULL);
    ASSERT_OK(sg_rpc_server_add_port(f->srv, f->target, creds, &err));
    grpc_server_credentials_release(creds);
    ASSERT_OK(sg_rpc_server_start(f->srv, &err));
}

static void tfix_stop(tfix *f)
{
    sg_rpc_server_shutdown(f->srv);
    sg_rpc_server_free(f->srv);
    sg_tls_server_free(f->ts);
    grpc_shutdown_blocking();
}

/* One call on a fresh channel; on success *seen is the client cert the server saw. */
static int call_with(const tfix *f, const char *bundle, const tcert *client, const char *want_id,
                     char **seen, sg_err *err)
{
    grpc_channel_credentials *creds = sg_tls_channel_credentials(
        bundle, client ? client->key_pem : NULL, client ? client->cert_pem : NULL, want_id, err);
    ASSERT(creds != NULL);
    grpc_channel *ch = grpc_channel_create(f->target, creds, NULL);
    grpc_channel_credentials_release(creds);
    ValidateJWTSVIDRequest req = VALIDATE_JWTSVIDREQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int rc = sg_rpc_unary(ch, PATH, &req.base, &validate_jwtsvidresponse__descriptor, NULL, 0, 5000,
                          &resp, NULL, err);
    if (rc == 0) {
        const char *s = ((ValidateJWTSVIDResponse *)resp)->spiffe_id;
        *seen = malloc(strlen(s) + 1);
        memcpy(*seen, s, strlen(s) + 1);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    grpc_channel_destroy(ch);
    return rc;
}

TEST(tls_no_client_cert_ok_and_no_peer_cert)
{
    tfix f;
    sg_err err;
    char *seen = NULL;
    make_pki();
    tfix_start(&f, &pki.server);
    ASSERT_OK(call_with(&f, pki.ca.cert_pem, NULL, SERVER_ID, &seen, &err));
    ASSERT_STREQ(seen, "");
    free(seen);
    tfix_stop(&f);
    free_pki();
}

TEST(tls_agent_cert_reaches_handler)
{
    tfix f;
    sg_err err;
    char *seen = NULL;
    make_pki();
    tfix_start(&f, &pki.server);
    ASSERT_OK(call_with(&f, pki.ca.cert_pem, &pki.agent, SERVER_ID, &seen, &err));
    ASSERT_STREQ(seen, pki.agent.cert_pem);
    free(seen);
    tfix_stop(&f);
    free_pki();
}

TEST(tls_wrong_server_id_rejected)
{
    tfix f;
    sg_err err;
    char *seen = NULL;
    make_pki();
    tfix_start(&f, &pki.wrong);
    ASSERT_EQ(call_with(&f, pki.ca.cert_pem, NULL, SERVER_ID, &seen, &err), SG_EUNAVAIL);
    ASSERT(strstr(err.msg, "mismatch") != NULL);
    /* Insecure bootstrap still checks the ID. */
    ASSERT_EQ(call_with(&f, NULL, NULL, SERVER_ID, &seen, &err), SG_EUNAVAIL);
    ASSERT(strstr(err.msg, "mismatch") != NULL);
    tfix_stop(&f);
    free_pki();
}

TEST(tls_foreign_ca_server_rejected)
{
    tfix f;
    sg_err err;
    char *seen = NULL;
    make_pki();
    tfix_start(&f, &pki.foreign_server);
    ASSERT_EQ(call_with(&f, pki.ca.cert_pem, NULL, SERVER_ID, &seen, &err), SG_EUNAVAIL);
    /* Insecure bootstrap skips the chain, so only the ID decides. */
    ASSERT_OK(call_with(&f, NULL, NULL, SERVER_ID, &seen, &err));
    free(seen);
    tfix_stop(&f);
    free_pki();
}

TEST(tls_foreign_client_cert_rejected)
{
    tfix f;
    sg_err err;
    char *seen = NULL;
    tcert foreign_agent;
    make_pki();
    make_cert(&foreign_agent, "fagent", AGENT_ID, &pki.foreign_ca);
    tfix_start(&f, &pki.server);
    ASSERT(call_with(&f, pki.ca.cert_pem, &foreign_agent, SERVER_ID, &seen, &err) < 0);
    free_cert(&foreign_agent);
    tfix_stop(&f);
    free_pki();
}

TEST(tls_update_swaps_identity_for_new_connections)
{
    tfix f;
    sg_err err;
    char *seen = NULL;
    make_pki();
    tfix_start(&f, &pki.wrong);
    ASSERT_EQ(call_with(&f, pki.ca.cert_pem, NULL, SERVER_ID, &seen, &err), SG_EUNAVAIL);
    ASSERT_OK(
        sg_tls_server_update(f.ts, pki.server.key_pem, pki.server.cert_pem, pki.ca.cert_pem, &err));
    ASSERT_OK(call_with(&f, pki.ca.cert_pem, &pki.agent, SERVER_ID, &seen, &err));
    ASSERT_STREQ(seen, pki.agent.cert_pem);
    free(seen);
    tfix_stop(&f);
    free_pki();
}

TEST(tls_bad_pem_rejected)
{
    sg_tls_server *ts = NULL;
    sg_err err;
    make_pki();
    ASSERT_EQ(sg_tls_server_new(&ts, "not a key", pki.server.cert_pem, pki.ca.cert_pem, &err),
              SG_ECRYPTO);
    ASSERT(strstr(err.msg, "private key") != NULL);
    ASSERT_EQ(sg_tls_server_new(&ts, pki.agent.key_pem, pki.server.cert_pem, pki.ca.cert_pem, &err),
              SG_EINVAL);
    ASSERT(strstr(err.msg, "does not match") != NULL);
    ASSERT_EQ(sg_tls_server_new(&ts, pki.server.key_pem, "garbage", pki.ca.cert_pem, &err),
              SG_EINVAL);
    ASSERT_EQ(sg_tls_server_new(&ts, pki.server.key_pem, pki.server.cert_pem, "", &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "bundle") != NULL);
    ASSERT_OK(
        sg_tls_server_new(&ts, pki.server.key_pem, pki.server.cert_pem, pki.ca.cert_pem, &err));
    ASSERT_EQ(
        sg_tls_server_update(ts, pki.agent.key_pem, pki.server.cert_pem, pki.ca.cert_pem, &err),
        SG_EINVAL);
    sg_tls_server_free(ts);
    ASSERT(sg_tls_channel_credentials(pki.ca.cert_pem, NULL, NULL, "example.org", &err) == NULL);
    ASSERT(strstr(err.msg, "\"example.org\"") != NULL);
    free_pki();
}
