/*
 * Federation unit tests: refresh-hint clamping, one bundle endpoint
 * (https_spiffe, backed by a real CA) fetched with sg_federation_fetch,
 * the SPIFFE ID and chain checks, hostile requests, and the server
 * config's federation block.
 */
#include "common/config.h"
#include "server/bundle_endpoint.h"
#include "server/ca.h"
#include "server/federation.h"

#include "test/runner.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

TEST(federation_refresh_hint_clamped)
{
    sg_bundle b = {0};

    ASSERT_EQ(sg_federation_next_refresh_s(NULL), SG_FED_REFRESH_DEFAULT_S);
    ASSERT_EQ(sg_federation_next_refresh_s(&b), SG_FED_REFRESH_DEFAULT_S);
    b.refresh_hint = -5;
    ASSERT_EQ(sg_federation_next_refresh_s(&b), SG_FED_REFRESH_DEFAULT_S);
    b.refresh_hint = 30;
    ASSERT_EQ(sg_federation_next_refresh_s(&b), 30);
    b.refresh_hint = (int64_t)1 << 40;
    ASSERT_EQ(sg_federation_next_refresh_s(&b), SG_FED_REFRESH_MAX_S);
}

/* A CA for other.test whose server SVID serves the endpoint and whose bundle it publishes. */
typedef struct ep_fixture {
    sg_ca *ca;
    sg_bundle bundle;
    sg_bundle_endpoint *ep;
    const char *body; /* when set, served instead of the bundle */
} ep_fixture;

static int fx_json(void *ctx, char **json, sg_err *err)
{
    ep_fixture *fx = ctx;

    if (fx->body != NULL) {
        *json = strdup(fx->body);
        return *json ? 0 : SG_ENOMEM;
    }
    return sg_bundle_to_jwks(&fx->bundle, json, err);
}

static int fx_identity(void *ctx, char **key, char **chain, int64_t *not_after, sg_err *err)
{
    ep_fixture *fx = ctx;

    *not_after = (int64_t)time(NULL) + 3600;
    return sg_ca_server_identity(fx->ca, 3600, key, chain, err);
}

static void fx_start(ep_fixture *fx)
{
    sg_ca_options o = {0};
    sg_err err = {0};

    memset(fx, 0, sizeof *fx);
    o.trust_domain = "other.test";
    o.key_type = SG_KEY_EC_P256;
    o.ca_ttl_s = 86400;
    if (sg_ca_new(&fx->ca, &o, &err) != 0)
        SG__FAIL("sg_ca_new: %s", err.msg);
    fx->bundle.trust_domain = strdup("other.test");
    fx->bundle.sequence = 7;
    fx->bundle.refresh_hint = 42;
    if (sg_ca_bundle_der(fx->ca, &fx->bundle.x509, &fx->bundle.nx509, &err) != 0)
        SG__FAIL("bundle: %s", err.msg);
    sg_bundle_endpoint_options eo = {
        .address = "127.0.0.1",
        .port = 0,
        .bundle_json = fx_json,
        .identity = fx_identity,
        .ctx = fx,
    };
    if (sg_bundle_endpoint_start(&fx->ep, &eo, &err) != 0)
        SG__FAIL("endpoint: %s", err.msg);
}

static void fx_stop(ep_fixture *fx)
{
    sg_bundle_endpoint_stop(fx->ep);
    sg_bundle_cleanup(&fx->bundle);
    sg_ca_free(fx->ca);
}

static void rel_for(ep_fixture *fx, sg_fed_rel *r, char *url, size_t n, const char *id)
{
    snprintf(url, n, "https://127.0.0.1:%d", sg_bundle_endpoint_port(fx->ep));
    r->trust_domain = "other.test";
    r->url = url;
    r->profile = "https_spiffe";
    r->endpoint_spiffe_id = (char *)(uintptr_t)id;
}

TEST(federation_fetch_https_spiffe)
{
    ep_fixture fx;
    sg_fed_rel r;
    char url[64];
    sg_bundle got;
    sg_err err = {0};

    fx_start(&fx);
    rel_for(&fx, &r, url, sizeof url, "spiffe://other.test/spire/server");
    ASSERT_OK(sg_federation_fetch(&r, &fx.bundle, &got, &err));
    ASSERT_EQ(got.nx509, fx.bundle.nx509);
    ASSERT_EQ(got.sequence, 7);
    ASSERT_EQ(got.refresh_hint, 42);
    ASSERT(sg_bundle_same_keys(&got, &fx.bundle));
    sg_bundle_cleanup(&got);

    /* Another SPIFFE ID than the endpoint presents: refused, both IDs named. */
    rel_for(&fx, &r, url, sizeof url, "spiffe://other.test/not-the-server");
    ASSERT_EQ(sg_federation_fetch(&r, &fx.bundle, &got, &err), SG_EUNTRUSTED);
    ASSERT(strstr(err.msg, "not-the-server") != NULL);
    ASSERT(strstr(err.msg, "spire/server") != NULL);

    /* No bundle to verify with. */
    rel_for(&fx, &r, url, sizeof url, "spiffe://other.test/spire/server");
    ASSERT_EQ(sg_federation_fetch(&r, NULL, &got, &err), SG_EUNTRUSTED);
    ASSERT(strstr(err.msg, "no bundle") != NULL);
    fx_stop(&fx);
}

TEST(federation_fetch_untrusted_chain)
{
    ep_fixture fx, other;
    sg_fed_rel r;
    char url[64];
    sg_bundle got;
    sg_err err = {0};

    fx_start(&fx);
    fx_start(&other);
    /* Verified against another CA's bundle: the chain does not verify. */
    rel_for(&fx, &r, url, sizeof url, "spiffe://other.test/spire/server");
    ASSERT_EQ(sg_federation_fetch(&r, &other.bundle, &got, &err), SG_EUNTRUSTED);
    ASSERT(strstr(err.msg, "not trusted") != NULL);
    fx_stop(&other);
    fx_stop(&fx);
}

TEST(federation_fetch_malformed_bodies)
{
    static const char *const bodies[] = {
        "not json",
        "{\"keys\": 5}",
        "{\"keys\": [{\"use\": \"x509-svid\", \"x5c\": [\"!!\"]}]}",
        "[]",
    };
    ep_fixture fx;
    sg_fed_rel r;
    char url[64];
    sg_bundle got;
    sg_err err = {0};

    fx_start(&fx);
    rel_for(&fx, &r, url, sizeof url, "spiffe://other.test/spire/server");
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        fx.body = bodies[i];
        if (sg_federation_fetch(&r, &fx.bundle, &got, &err) == 0)
            SG__FAIL("body %zu accepted", i);
        ASSERT(strstr(err.msg, "malformed bundle") != NULL);
    }
    /* Unreachable endpoint: named. */
    r.url = "https://127.0.0.1:1";
    ASSERT_ERR(sg_federation_fetch(&r, &fx.bundle, &got, &err));
    ASSERT(strstr(err.msg, "127.0.0.1:1") != NULL);
    fx_stop(&fx);
}

TEST(federation_endpoint_survives_garbage)
{
    ep_fixture fx;
    sg_fed_rel r;
    char url[64];
    sg_bundle got;
    sg_err err = {0};
    struct sockaddr_in sa = {.sin_family = AF_INET};

    fx_start(&fx);
    sa.sin_port = htons((uint16_t)sg_bundle_endpoint_port(fx.ep));
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    /* Clients that send junk instead of a TLS hello, and ones that send nothing. */
    int idle[4];
    for (int i = 0; i < 4; i++) {
        idle[i] = socket(AF_INET, SOCK_STREAM, 0);
        ASSERT_OK(connect(idle[i], (struct sockaddr *)&sa, sizeof sa));
        if (i % 2 == 0)
            ASSERT(write(idle[i], "GET / HTTP/1.1\r\n\r\n", 18) == 18);
    }
    rel_for(&fx, &r, url, sizeof url, "spiffe://other.test/spire/server");
    ASSERT_OK(sg_federation_fetch(&r, &fx.bundle, &got, &err));
    sg_bundle_cleanup(&got);
    for (int i = 0; i < 4; i++)
        close(idle[i]);
    fx_stop(&fx);
}

/* Writes a server config with fed as the body of server { federation { } }. */
static const char *fed_conf(const char *fed)
{
    static char path[512];
    FILE *f;

    snprintf(path, sizeof path, "%s/server.conf", sg_test_tmpdir());
    f = fopen(path, "w");
    fprintf(f,
            "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/tmp/x\"\n"
            "  federation {\n%s\n  }\n}\n"
            "plugins {\n  DataStore \"sql\" {\n    plugin_data {\n      database_type = "
            "\"sqlite3\"\n      connection_string = \"/tmp/x/db\"\n    }\n  }\n"
            "  KeyManager \"memory\" {\n    plugin_data {}\n  }\n"
            "  NodeAttestor \"join_token\" {\n    plugin_data {}\n  }\n}\n",
            fed);
    fclose(f);
    return path;
}

TEST(federation_config_spire_shape)
{
    sg_server_config c;
    sg_err err = {0};
    const char *p = fed_conf(
        "    bundle_endpoint {\n      address = \"127.0.0.1\"\n      port = 8443\n"
        "      refresh_hint = \"10m\"\n      profile \"https_web\" {\n"
        "        serving_cert_file {\n          cert_file_path = \"/c.pem\"\n"
        "          key_file_path = \"/k.pem\"\n          file_sync_interval = \"1m\"\n"
        "        }\n      }\n    }\n"
        "    federates_with \"spiffe://a.test\" {\n"
        "      bundle_endpoint_url = \"https://a.test:8443\"\n"
        "      bundle_endpoint_profile \"https_spiffe\" {\n"
        "        endpoint_spiffe_id = \"spiffe://a.test/spire/server\"\n      }\n    }\n"
        "    federates_with \"b.test\" {\n      bundle_endpoint_url = \"https://b.test/x\"\n"
        "      bundle_endpoint_profile \"https_web\" {}\n    }\n");

    if (sg_server_config_load(p, false, &c, &err) != 0)
        SG__FAIL("load: %s", err.msg);
    ASSERT(c.fed_endpoint_enabled);
    ASSERT_STREQ(c.fed_endpoint_address, "127.0.0.1");
    ASSERT_EQ(c.fed_endpoint_port, 8443);
    ASSERT_EQ(c.fed_endpoint_refresh_hint_s, 600);
    ASSERT(c.fed_endpoint_https_web);
    ASSERT_STREQ(c.fed_endpoint_cert_file, "/c.pem");
    ASSERT_STREQ(c.fed_endpoint_key_file, "/k.pem");
    ASSERT_EQ(c.nfederates_with, 2);
    ASSERT_STREQ(c.federates_with[0].trust_domain, "a.test");
    ASSERT(!c.federates_with[0].https_web);
    ASSERT_STREQ(c.federates_with[0].endpoint_spiffe_id, "spiffe://a.test/spire/server");
    ASSERT_STREQ(c.federates_with[1].trust_domain, "b.test");
    ASSERT(c.federates_with[1].https_web);
    sg_server_config_cleanup(&c);

    /* No federation block: nothing enabled, SPIRE's defaults. */
    p = fed_conf("");
    ASSERT_OK(sg_server_config_load(p, false, &c, &err));
    ASSERT(!c.fed_endpoint_enabled);
    ASSERT_EQ(c.nfederates_with, 0);
    sg_server_config_cleanup(&c);
}

TEST(federation_config_errors_name_the_problem)
{
    static const struct {
        const char *body, *want;
    } cases[] = {
        {"    federates_with \"a.test\" {\n      bundle_endpoint_url = \"http://a\"\n"
         "      bundle_endpoint_profile \"https_web\" {}\n    }\n",
         "must start with https://"},
        {"    federates_with \"a.test\" {\n      bundle_endpoint_url = \"https://a\"\n    }\n",
         "needs bundle_endpoint_profile"},
        {"    federates_with \"a.test\" {\n      bundle_endpoint_url = \"https://a\"\n"
         "      bundle_endpoint_profile \"https_spiffe\" {}\n    }\n",
         "needs endpoint_spiffe_id"},
        {"    federates_with \"a.test\" {\n      bundle_endpoint_url = \"https://a\"\n"
         "      bundle_endpoint_profile \"ftp\" {}\n    }\n",
         "\"ftp\" is unknown"},
        {"    federates_with \"Bad TD\" {\n      bundle_endpoint_url = \"https://a\"\n"
         "      bundle_endpoint_profile \"https_web\" {}\n    }\n",
         "Bad TD"},
        {"    federates_with \"example.org\" {\n      bundle_endpoint_url = \"https://a\"\n"
         "      bundle_endpoint_profile \"https_web\" {}\n    }\n",
         "own trust domain"},
        {"    bundle_endpoint {\n      profile \"https_web\" {}\n    }\n", "serving_cert_file"},
        {"    bundle_endpoint {\n      acme {}\n    }\n", "acme"},
        {"    bundle_endpoint {\n      prot = 1\n    }\n", "prot"},
        {"    bundle_endpoint {\n      port = 70000\n    }\n", "out of range"},
        {"    bundel_endpoint {}\n", "bundel_endpoint"},
    };
    sg_server_config c;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sg_err err = {0};
        const char *p = fed_conf(cases[i].body);
        if (sg_server_config_load(p, false, &c, &err) == 0)
            SG__FAIL("case %zu loaded", i);
        if (strstr(err.msg, cases[i].want) == NULL)
            SG__FAIL("case %zu: \"%s\" does not name \"%s\"", i, err.msg, cases[i].want);
    }
}

TEST(federation_https_web_roundtrip)
{
    char dir[256], cert[320], key[320], cmd[1200], url[64];
    ep_fixture fx;
    sg_bundle_endpoint *web = NULL;
    sg_fed_rel r;
    sg_bundle got;
    sg_err err = {0};

    snprintf(dir, sizeof dir, "%s", sg_test_tmpdir());
    snprintf(cert, sizeof cert, "%s/web.pem", dir);
    snprintf(key, sizeof key, "%s/web.key", dir);
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout %s "
             "-out %s -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 -days 1 "
             ">/dev/null 2>&1",
             key, cert);
    ASSERT_OK(system(cmd));
    fx_start(&fx); /* only its CA and bundle are used */
    sg_bundle_endpoint_options eo = {
        .address = "127.0.0.1",
        .https_web = true,
        .cert_file_path = cert,
        .key_file_path = key,
        .bundle_json = fx_json,
        .ctx = &fx,
    };
    ASSERT_OK(sg_bundle_endpoint_start(&web, &eo, &err));
    snprintf(url, sizeof url, "https://127.0.0.1:%d", sg_bundle_endpoint_port(web));
    r.trust_domain = "other.test";
    r.url = url;
    r.profile = "https_web";
    r.endpoint_spiffe_id = NULL;
    /* Not signed by the system roots: refused. */
    unsetenv("SSL_CERT_FILE");
    ASSERT_ERR(sg_federation_fetch(&r, NULL, &got, &err));
    ASSERT(strstr(err.msg, url) != NULL);
    /* With the certificate as the roots file, the bundle arrives. */
    setenv("SSL_CERT_FILE", cert, 1);
    ASSERT_OK(sg_federation_fetch(&r, NULL, &got, &err));
    ASSERT(sg_bundle_same_keys(&got, &fx.bundle));
    sg_bundle_cleanup(&got);
    /* A missing certificate file is named at start. */
    sg_bundle_endpoint *bad = NULL;
    eo.cert_file_path = "/nonexistent/web.pem";
    ASSERT_ERR(sg_bundle_endpoint_start(&bad, &eo, &err));
    ASSERT(strstr(err.msg, "/nonexistent/web.pem") != NULL);
    sg_bundle_endpoint_stop(web);
    fx_stop(&fx);
}

TEST(federation_refresh_sequence_rules)
{
    char path[300], url[64];
    ep_fixture fx;
    sg_datastore *ds = NULL;
    sg_federation *f = NULL;
    sg_fed_bundle_rec rec;
    sg_bundle got;
    char *json = NULL;
    sg_err err = {0};

    fx_start(&fx);
    snprintf(path, sizeof path, "%s/ds.sqlite3", sg_test_tmpdir());
    ASSERT_OK(sg_datastore_open(&ds, "sqlite3", path, &err));
    snprintf(url, sizeof url, "https://127.0.0.1:%d", sg_bundle_endpoint_port(fx.ep));
    sg_fed_rel r = {.trust_domain = "other.test",
                    .url = url,
                    .profile = "https_spiffe",
                    .endpoint_spiffe_id = "spiffe://other.test/spire/server"};
    ASSERT_OK(sg_ds_fed_rel_put(ds, &r, false, &err));
    ASSERT_OK(sg_federation_new(&f, ds, "example.org", NULL, NULL, &err));

    /* Bootstrap bundle with a higher local number and the same keys: kept as it is. */
    fx.bundle.sequence = 9;
    ASSERT_OK(sg_bundle_to_jwks(&fx.bundle, &json, &err));
    ASSERT_OK(sg_ds_fed_bundle_put(ds, "other.test", json, 9, NULL, &err));
    free(json);
    fx.bundle.sequence = 7;
    ASSERT_OK(sg_federation_refresh(f, "other.test", &got, &err));
    ASSERT_EQ(got.sequence, 9);
    sg_bundle_cleanup(&got);
    ASSERT_OK(sg_ds_fed_bundle_get(ds, "other.test", &rec, &err));
    ASSERT_EQ(rec.sequence, 9);
    sg_fed_bundle_rec_cleanup(&rec);

    /* No spiffe_sequence at all: stored under the current number. */
    fx.bundle.sequence = 0;
    ASSERT_OK(sg_federation_refresh(f, "other.test", NULL, &err));
    ASSERT_OK(sg_ds_fed_bundle_get(ds, "other.test", &rec, &err));
    ASSERT_EQ(rec.sequence, 9);
    sg_fed_bundle_rec_cleanup(&rec);

    /* A newer one is stored. */
    fx.bundle.sequence = 12;
    ASSERT_OK(sg_federation_refresh(f, "other.test", NULL, &err));
    ASSERT_OK(sg_ds_fed_bundle_get(ds, "other.test", &rec, &err));
    ASSERT_EQ(rec.sequence, 12);
    sg_fed_bundle_rec_cleanup(&rec);

    /* No relationship: named. */
    ASSERT_EQ(sg_federation_refresh(f, "none.test", NULL, &err), SG_ENOENT);
    ASSERT(strstr(err.msg, "none.test") != NULL);
    sg_federation_free(f);
    sg_datastore_close(ds);
    fx_stop(&fx);
}
