/* Unit tests for common/config.c: SPIRE configs, value forms, and errors with lines. */
#include "common/config.h"
#include "test/runner.h"

#include <stdlib.h>
#include <unistd.h>

/*
 * SPIRE quickstart-shaped configs: test/fixtures/spire-quickstart/conf under
 * $SIGIL_FIXTURES (default test/fixtures, relative to the repository root the
 * tests run from), or a real SPIRE copy when $SIGIL_SPIRE_QUICKSTART names one.
 */
static const char *qs_path(const char *rel)
{
    static char path[1024];
    const char *dir = getenv("SIGIL_SPIRE_QUICKSTART");
    const char *fix = getenv("SIGIL_FIXTURES");
    int n;

    if (dir != NULL && dir[0] != '\0')
        n = snprintf(path, sizeof path, "%s/%s", dir, rel);
    else
        n = snprintf(path, sizeof path, "%s/spire-quickstart/conf/%s",
                     fix != NULL && fix[0] != '\0' ? fix : "test/fixtures", rel);
    if (n < 0 || (size_t)n >= sizeof path)
        SG__FAIL("quickstart path too long for %s", rel);
    if (access(path, R_OK) != 0)
        SG__FAIL("%s not readable (run from the repository root or set SIGIL_FIXTURES)", path);
    return path;
}

/* Writes text to <tmpdir>/name and returns the path (static buffer). */
static const char *write_conf(const char *name, const char *text)
{
    static char path[512];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", sg_test_tmpdir(), name);
    f = fopen(path, "w");
    ASSERT(f != NULL);
    fputs(text, f);
    fclose(f);
    return path;
}

static const char *const SERVER_TAIL = "plugins {\n"
                                       "  DataStore \"sql\" {\n"
                                       "    plugin_data {\n"
                                       "      database_type = \"sqlite3\"\n"
                                       "      connection_string = \"/tmp/x.sqlite3\"\n"
                                       "    }\n"
                                       "  }\n"
                                       "  NodeAttestor \"join_token\" { plugin_data {} }\n"
                                       "  KeyManager \"memory\" { plugin_data = {} }\n"
                                       "}\n";

/* Server config: `server { <body> }` followed by the standard plugins block. */
static int load_server(const char *body, sg_server_config *s, sg_err *err)
{
    char text[8192];

    snprintf(text, sizeof text, "server {\n%s}\n%s", body, SERVER_TAIL);
    return sg_server_config_load(write_conf("server.conf", text), false, s, err);
}

/* Expects the full text to fail to load as a server config, with want in the message. */
static void server_bad(const char *text, const char *want)
{
    sg_server_config s;
    sg_err err;

    sg_err_clear(&err);
    if (sg_server_config_load(write_conf("server.conf", text), false, &s, &err) == 0) {
        fprintf(stderr, "  accepted:\n%s\n", text);
        exit(1);
    }
    ASSERT_EQ(err.code, SG_ECONFIG);
    if (strstr(err.msg, want) == NULL) {
        fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", err.msg, want);
        exit(1);
    }
}

static void server_body_bad(const char *body, const char *want)
{
    char text[8192];

    snprintf(text, sizeof text, "server {\n%s}\n%s", body, SERVER_TAIL);
    server_bad(text, want);
}

static void agent_bad(const char *text, const char *want)
{
    sg_agent_config a;
    sg_err err;

    sg_err_clear(&err);
    if (sg_agent_config_load(write_conf("agent.conf", text), false, &a, &err) == 0) {
        fprintf(stderr, "  accepted:\n%s\n", text);
        exit(1);
    }
    if (strstr(err.msg, want) == NULL) {
        fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", err.msg, want);
        exit(1);
    }
}

static const char *const AGENT_HEAD = "agent {\n"
                                      "  data_dir = \"/tmp/a\"\n"
                                      "  server_address = \"127.0.0.1\"\n"
                                      "  trust_domain = \"example.org\"\n"
                                      "  trust_bundle_path = \"/tmp/b.pem\"\n"
                                      "}\n";

TEST(config_loads_spire_quickstart_server_conf)
{
    sg_server_config s;
    sg_err err;

    sg_err_clear(&err);
    if (sg_server_config_load(qs_path("server/server.conf"), false, &s, &err) != 0) {
        fprintf(stderr, "  %s\n", err.msg);
        exit(1);
    }
    ASSERT_STREQ(s.bind_address, "127.0.0.1");
    ASSERT_EQ(s.bind_port, 8081);
    ASSERT_STREQ(s.socket_path, "/tmp/spire-server/private/api.sock");
    ASSERT_STREQ(s.trust_domain, "example.org");
    ASSERT_STREQ(s.data_dir, "./.data");
    ASSERT_EQ(s.log_level, SG_LOG_DEBUG);
    ASSERT_STREQ(s.db_type, "sqlite3");
    ASSERT_STREQ(s.db_connection_string, "./.data/datastore.sqlite3");
    ASSERT(s.join_token_enabled);
    ASSERT(!s.keys_on_disk);
    ASSERT(s.has_upstream);
    ASSERT_STREQ(s.upstream_key_file, "./conf/server/dummy_upstream_ca.key");
    ASSERT_STREQ(s.upstream_cert_file, "./conf/server/dummy_upstream_ca.crt");
    ASSERT(s.upstream_bundle_file == NULL);
    ASSERT_EQ(s.ca_key_type, SG_KEY_EC_P256);
    ASSERT_EQ(s.ca_ttl_s, 86400);
    ASSERT_EQ(s.default_x509_svid_ttl_s, 3600);
    ASSERT_EQ(s.agent_ttl_s, 0);
    ASSERT_STREQ(s.ca_subject_organization, "SPIFFE");
    sg_server_config_cleanup(&s);
    sg_server_config_cleanup(&s);
}

TEST(config_loads_spire_quickstart_agent_conf)
{
    sg_agent_config a;
    sg_err err;

    sg_err_clear(&err);
    if (sg_agent_config_load(qs_path("agent/agent.conf"), false, &a, &err) != 0) {
        fprintf(stderr, "  %s\n", err.msg);
        exit(1);
    }
    ASSERT_STREQ(a.data_dir, "./.data");
    ASSERT_EQ(a.log_level, SG_LOG_DEBUG);
    ASSERT_STREQ(a.server_address, "127.0.0.1");
    ASSERT_EQ(a.server_port, 8081);
    ASSERT_STREQ(a.socket_path, "/tmp/spire-agent/public/api.sock");
    ASSERT_STREQ(a.trust_bundle_path, "./conf/agent/dummy_root_ca.crt");
    ASSERT_STREQ(a.trust_bundle_format, "pem");
    ASSERT_STREQ(a.trust_domain, "example.org");
    ASSERT(a.join_token == NULL);
    ASSERT(!a.insecure_bootstrap);
    ASSERT(a.join_token_enabled);
    ASSERT(a.keys_on_disk);
    ASSERT_STREQ(a.keys_directory, "./.data");
    ASSERT(a.unix_attestor_enabled);
    ASSERT(!a.discover_workload_path);
    ASSERT_EQ(a.workload_size_limit, 0);
    sg_agent_config_cleanup(&a);
}

TEST(config_server_all_keys_and_value_forms)
{
    const char *text = "# full server\n"
                       "server {\n"
                       "  bind_address = \"0.0.0.0\"\n"
                       "  bind_port = 9090\n"
                       "  socket_path = \"/run/s.sock\"\n"
                       "  trust_domain = \"spiffe://prod.example.org\"\n"
                       "  data_dir = \"/var/lib/sigil\"\n"
                       "  log_level = \"warn\"\n"
                       "  ca_key_type = \"rsa-2048\"\n"
                       "  ca_ttl = \"168h\"\n"
                       "  default_x509_svid_ttl = \"1h30m\"\n"
                       "  agent_ttl = \"72h\"\n"
                       "  ca_subject {\n"
                       "    country = [\"DE\"]\n"
                       "    organization = [\"Acme\"]\n"
                       "    common_name = \"Acme CA\"\n"
                       "  }\n"
                       "}\n"
                       "plugins {\n"
                       "  DataStore \"sql\" {\n"
                       "    plugin_data = {\n"
                       "      database_type = \"sqlite3\", connection_string = \"/d.db\"\n"
                       "    }\n"
                       "  }\n"
                       "  NodeAttestor \"join_token\" {}\n"
                       "  KeyManager \"disk\" { plugin_data { keys_path = \"/k/keys.json\" } }\n"
                       "  UpstreamAuthority \"disk\" {\n"
                       "    plugin_data {\n"
                       "      key_file_path = \"/u.key\"\n"
                       "      cert_file_path = \"/u.crt\"\n"
                       "      bundle_file_path = \"/b.crt\"\n"
                       "    }\n"
                       "  }\n"
                       "}\n"
                       "health_checks { listener_enabled = true }\n";
    sg_server_config s;
    sg_err err;

    sg_err_clear(&err);
    if (sg_server_config_load(write_conf("server.conf", text), false, &s, &err) != 0) {
        fprintf(stderr, "  %s\n", err.msg);
        exit(1);
    }
    ASSERT_EQ(s.bind_port, 9090);
    ASSERT_STREQ(s.socket_path, "/run/s.sock");
    ASSERT_STREQ(s.trust_domain, "prod.example.org");
    ASSERT_EQ(s.log_level, SG_LOG_WARN);
    ASSERT_EQ(s.ca_key_type, SG_KEY_RSA_2048);
    ASSERT_EQ(s.ca_ttl_s, 168 * 3600);
    ASSERT_EQ(s.default_x509_svid_ttl_s, 5400);
    ASSERT_EQ(s.agent_ttl_s, 72 * 3600);
    ASSERT_STREQ(s.ca_subject_country, "DE");
    ASSERT_STREQ(s.ca_subject_organization, "Acme");
    ASSERT_STREQ(s.ca_subject_common_name, "Acme CA");
    ASSERT(s.keys_on_disk);
    ASSERT_STREQ(s.keys_path, "/k/keys.json");
    ASSERT_STREQ(s.upstream_bundle_file, "/b.crt");
    sg_server_config_cleanup(&s);
}

TEST(config_server_defaults)
{
    sg_server_config s;
    sg_err err;

    ASSERT_OK(load_server("trust_domain = \"example.org\"\ndata_dir = \"/d\"\n", &s, &err));
    ASSERT_STREQ(s.bind_address, "0.0.0.0");
    ASSERT_EQ(s.bind_port, 8081);
    ASSERT_STREQ(s.socket_path, "/tmp/spire-server/private/api.sock");
    ASSERT_EQ(s.log_level, SG_LOG_INFO);
    ASSERT(!s.has_upstream);
    ASSERT(s.ca_subject_country == NULL);
    ASSERT(s.ca_subject_common_name == NULL);
    sg_server_config_cleanup(&s);
}

TEST(config_quoted_values_and_case_insensitive_level)
{
    sg_server_config s;
    sg_err err;

    ASSERT_OK(load_server("trust_domain = \"example.org\"\ndata_dir = \"/d\"\n"
                          "bind_port = \"8443\"\nlog_level = \"Error\"\nca_ttl = 7200\n",
                          &s, &err));
    ASSERT_EQ(s.bind_port, 8443);
    ASSERT_EQ(s.log_level, SG_LOG_ERROR);
    ASSERT_EQ(s.ca_ttl_s, 7200);
    sg_server_config_cleanup(&s);
}

TEST(config_unknown_key_names_it_and_line)
{
    server_body_bad("trust_domain = \"example.org\"\ndata_dir = \"/d\"\nbind_prot = 1\n",
                    "server.conf:4: unknown key \"bind_prot\" in server {}");
    server_body_bad("trust_domain = \"example.org\"\ndata_dir = \"/d\"\n"
                    "ca_subject { org = [\"x\"] }\n",
                    "server.conf:4: unknown key \"org\" in ca_subject {}");
}

TEST(config_unknown_section_and_plugins)
{
    server_bad("server { trust_domain = \"example.org\"\n data_dir = \"/d\" }\nfoo {}\n",
               "server.conf:3: unknown section \"foo\"");
    server_bad("server { trust_domain = \"example.org\"\n data_dir = \"/d\" }\n"
               "plugins {\n"
               "  Notifier \"k8sbundle\" {}\n"
               "}\n",
               "server.conf:4: unknown plugin type \"Notifier\" (sigil has: DataStore, "
               "KeyManager, NodeAttestor, UpstreamAuthority)");
    server_bad("server { trust_domain = \"example.org\"\n data_dir = \"/d\" }\n"
               "plugins {\n"
               "  NodeAttestor \"x509pop\" {}\n"
               "}\n",
               "server.conf:4: unknown NodeAttestor plugin \"x509pop\" (sigil has: join_token)");
    server_bad("server { trust_domain = \"example.org\"\n data_dir = \"/d\" }\n"
               "plugins {\n"
               "  KeyManager \"aws_kms\" {}\n"
               "}\n",
               "unknown KeyManager plugin \"aws_kms\" (sigil has: disk, memory)");
}

TEST(config_agent_unknown_workload_attestor)
{
    char text[4096];

    snprintf(text, sizeof text,
             "%s"
             "plugins {\n"
             "  NodeAttestor \"join_token\" {}\n"
             "  KeyManager \"memory\" {}\n"
             "  WorkloadAttestor \"docker\" { plugin_data {} }\n"
             "}\n",
             AGENT_HEAD);
    agent_bad(text, "agent.conf:10: unknown WorkloadAttestor plugin \"docker\" (sigil has: unix)");
}

TEST(config_server_datastore_rules)
{
    server_bad("server { trust_domain = \"example.org\"\n data_dir = \"/d\" }\n"
               "plugins {\n"
               "  DataStore \"sql\" { plugin_data { database_type = \"postgres\"\n"
               "    connection_string = \"dbname=x\" } }\n"
               "  NodeAttestor \"join_token\" {}\n"
               "  KeyManager \"memory\" {}\n"
               "}\n",
               "server.conf:4: DataStore \"sql\" database_type \"postgres\" is not supported yet");
    server_bad("server { trust_domain = \"example.org\"\n data_dir = \"/d\" }\n"
               "plugins {\n"
               "  DataStore \"sql\" { plugin_data { database_type = \"sqlite3\" } }\n"
               "  NodeAttestor \"join_token\" {}\n"
               "  KeyManager \"memory\" {}\n"
               "}\n",
               "server.conf:4: DataStore \"sql\" needs connection_string");
    server_bad("server { trust_domain = \"example.org\"\n data_dir = \"/d\" }\n"
               "plugins {\n"
               "  NodeAttestor \"join_token\" {}\n"
               "  KeyManager \"memory\" {}\n"
               "}\n",
               "server.conf:3: plugins { } needs exactly one DataStore");
    server_bad("server { trust_domain = \"example.org\"\n data_dir = \"/d\" }\n",
               "needs exactly one DataStore");
}

TEST(config_server_plugin_constraints)
{
    const char *head = "server { trust_domain = \"example.org\"\n data_dir = \"/d\" }\n"
                       "plugins {\n"
                       "  DataStore \"sql\" { plugin_data { database_type = \"sqlite3\"\n"
                       "    connection_string = \"x\" } }\n";
    char text[4096];

    snprintf(text, sizeof text,
             "%s  NodeAttestor \"join_token\" {}\n  KeyManager \"memory\" {}\n"
             "  KeyManager \"disk\" { plugin_data { keys_path = \"/k\" } }\n}\n",
             head);
    server_bad(text, "server.conf:8: KeyManager \"disk\": sigil allows exactly one KeyManager");
    snprintf(text, sizeof text, "%s  NodeAttestor \"join_token\" {}\n}\n", head);
    server_bad(text, "needs exactly one KeyManager");
    snprintf(text, sizeof text, "%s  KeyManager \"memory\" {}\n}\n", head);
    server_bad(text, "needs at least one NodeAttestor");
    snprintf(text, sizeof text, "%s  NodeAttestor \"join_token\" {}\n  KeyManager \"disk\" {}\n}\n",
             head);
    server_bad(text, "server.conf:7: KeyManager \"disk\" needs keys_path");
    snprintf(text, sizeof text,
             "%s  NodeAttestor \"join_token\" {}\n  KeyManager \"memory\" {}\n"
             "  UpstreamAuthority \"disk\" { plugin_data { key_file_path = \"/k\" } }\n}\n",
             head);
    server_bad(text, "server.conf:8: UpstreamAuthority \"disk\" needs cert_file_path");
    snprintf(text, sizeof text,
             "%s  NodeAttestor \"join_token\" {}\n  KeyManager \"memory\" {}\n"
             "  NodeAttestor \"join_token\" {}\n}\n",
             head);
    server_bad(text, "server.conf:8: NodeAttestor \"join_token\" is configured twice");
    snprintf(text, sizeof text,
             "%s  NodeAttestor \"join_token\" { plugin_data { foo = 1 } }\n"
             "  KeyManager \"memory\" {}\n}\n",
             head);
    server_bad(text, "server.conf:6: unknown key \"foo\" in plugin_data of NodeAttestor");
    snprintf(text, sizeof text,
             "%s  NodeAttestor \"join_token\" { plugin_cmd = \"/bin/x\" }\n"
             "  KeyManager \"memory\" {}\n}\n",
             head);
    server_bad(text, "external plugins are not supported");
    snprintf(text, sizeof text,
             "%s  NodeAttestor \"join_token\" {}\n  KeyManager \"memory\" {}\n"
             "  KeyManager \"disk\" { enabled = false }\n}\n",
             head);
    {
        sg_server_config s;
        sg_err err;

        ASSERT_OK(sg_server_config_load(write_conf("server.conf", text), false, &s, &err));
        ASSERT(!s.keys_on_disk);
        sg_server_config_cleanup(&s);
    }
}

TEST(config_server_value_errors_have_lines)
{
    const char *td = "trust_domain = \"example.org\"\ndata_dir = \"/d\"\n";
    char body[1024];

    snprintf(body, sizeof body, "%sbind_port = 0\n", td);
    server_body_bad(body, "server.conf:4: bind_port = 0 is out of range [1, 65535]");
    snprintf(body, sizeof body, "%sbind_port = \"70000\"\n", td);
    server_body_bad(body, "server.conf:4: bind_port: 70000 is out of range");
    snprintf(body, sizeof body, "%sbind_port = \"http\"\n", td);
    server_body_bad(body, "server.conf:4: bind_port: not an integer: \"http\"");
    snprintf(body, sizeof body, "%sbind_port = true\n", td);
    server_body_bad(body, "server.conf:4: bind_port must be an integer, not a bool");
    snprintf(body, sizeof body, "%sca_ttl = \"1d\"\n", td);
    server_body_bad(body, "server.conf:4: ca_ttl: unknown unit");
    snprintf(body, sizeof body, "%sca_ttl = \"-1h\"\n", td);
    server_body_bad(body, "server.conf:4: ca_ttl: negative duration");
    snprintf(body, sizeof body, "%sca_ttl = \"0s\"\n", td);
    server_body_bad(body, "server.conf:4: ca_ttl = \"0s\" must be at least 1s");
    snprintf(body, sizeof body, "%sca_ttl = \"1h\"\ndefault_x509_svid_ttl = \"2h\"\n", td);
    server_body_bad(body, "server.conf:5: default_x509_svid_ttl (7200s) must be shorter than "
                          "ca_ttl (3600s)");
    snprintf(body, sizeof body, "%slog_level = \"verbose\"\n", td);
    server_body_bad(body, "server.conf:4: log_level \"verbose\" is not one of");
    snprintf(body, sizeof body, "%sca_key_type = \"ed25519\"\n", td);
    server_body_bad(body, "server.conf:4: ca_key_type: unknown key type \"ed25519\"");
    snprintf(body, sizeof body, "%sbind_port = 1\nbind_port = 2\n", td);
    server_body_bad(body, "server.conf:5: duplicate key \"bind_port\" in server {} (first set on "
                          "line 4)");
    snprintf(body, sizeof body, "%sbind_address = [\"a\"]\n", td);
    server_body_bad(body, "server.conf:4: bind_address must be a string, not a list");
    server_body_bad("trust_domain = \"Example.org\"\ndata_dir = \"/d\"\n",
                    "server.conf:2: trust_domain: trust domain must be lower case");
    server_body_bad("data_dir = \"/d\"\n", "server.conf:1: server { } needs trust_domain");
    server_body_bad("trust_domain = \"example.org\"\n", "server { } needs data_dir");
    server_bad("plugins {}\n", "missing server { } section");
    server_bad("server {}\nserver {}\n", "server.conf:2: duplicate server section");
    server_bad("server {\n  bind_port = 80\n", "server.conf:3: missing '}' for the '{' on line 1");
}

TEST(config_agent_rules)
{
    char text[4096];
    const char *plugins = "plugins {\n"
                          "  NodeAttestor \"join_token\" {}\n"
                          "  KeyManager \"memory\" {}\n"
                          "  WorkloadAttestor \"unix\" { plugin_data {\n"
                          "    discover_workload_path = \"true\"\n"
                          "    workload_size_limit = -1\n"
                          "  } }\n"
                          "}\n";
    sg_agent_config a;
    sg_err err;

    snprintf(
        text, sizeof text,
        "agent {\n data_dir = \"/a\"\n server_address = \"s\"\n trust_domain = \"example.org\"\n"
        " insecure_bootstrap = true\n server_port = \"9000\"\n join_token = \"abc\"\n"
        " trust_bundle_format = \"spiffe\"\n}\n%s",
        plugins);
    sg_err_clear(&err);
    if (sg_agent_config_load(write_conf("agent.conf", text), false, &a, &err) != 0) {
        fprintf(stderr, "  %s\n", err.msg);
        exit(1);
    }
    ASSERT(a.insecure_bootstrap);
    ASSERT(a.trust_bundle_path == NULL);
    ASSERT_EQ(a.server_port, 9000);
    ASSERT_STREQ(a.join_token, "abc");
    ASSERT_STREQ(a.trust_bundle_format, "spiffe");
    ASSERT(!a.keys_on_disk);
    ASSERT_STREQ(a.keys_directory, "/a");
    ASSERT(a.discover_workload_path);
    ASSERT_EQ(a.workload_size_limit, -1);
    sg_agent_config_cleanup(&a);

    snprintf(
        text, sizeof text,
        "agent {\n data_dir = \"/a\"\n server_address = \"s\"\n trust_domain = \"example.org\"\n"
        "}\n%s",
        plugins);
    agent_bad(text, "agent.conf:1: agent { } needs trust_bundle_path (or insecure_bootstrap");
    snprintf(
        text, sizeof text,
        "agent {\n data_dir = \"/a\"\n server_address = \"s\"\n trust_domain = \"example.org\"\n"
        " insecure_bootstrap = \"yes\"\n}\n%s",
        plugins);
    agent_bad(text, "agent.conf:5: insecure_bootstrap = \"yes\" is not true or false");
    snprintf(text, sizeof text, "%s%s", AGENT_HEAD,
             "plugins {\n NodeAttestor \"join_token\" {}\n KeyManager \"memory\" {}\n}\n");
    agent_bad(text, "agent.conf:7: plugins { } needs at least one WorkloadAttestor");
    snprintf(
        text, sizeof text,
        "agent {\n data_dir = \"/a\"\n server_address = \"s\"\n trust_domain = \"example.org\"\n"
        " trust_bundle_path = \"/b\"\n trust_bundle_format = \"der\"\n}\n%s",
        plugins);
    agent_bad(text, "agent.conf:6: trust_bundle_format \"der\" must be \"pem\" or \"spiffe\"");
    snprintf(text, sizeof text, "agent {\n server_address = \"s\"\n}\n%s", plugins);
    agent_bad(text, "agent { } needs data_dir");
    snprintf(text, sizeof text, "%s%s", AGENT_HEAD,
             "plugins {\n NodeAttestor \"join_token\" {}\n KeyManager \"memory\" {}\n"
             " WorkloadAttestor \"unix\" { plugin_data { workload_size_limit = 1.5 } }\n}\n");
    agent_bad(text, "agent.conf:10: workload_size_limit = 1.5 is not an integer");
    snprintf(text, sizeof text, "%s%s", AGENT_HEAD, "plugins {\n DataStore \"sql\" {}\n}\n");
    agent_bad(text, "agent.conf:8: unknown plugin type \"DataStore\" (sigil has: KeyManager, "
                    "NodeAttestor, WorkloadAttestor)");
    agent_bad("agent {\n  trust_bundle_url = \"https://x\"\n}\n",
              "agent.conf:2: unknown key \"trust_bundle_url\" in agent {}");
}

TEST(config_expand_env)
{
    const char *text = "server {\n"
                       "  trust_domain = \"${SIGIL_TEST_TD}\"\n"
                       "  data_dir = \"$SIGIL_TEST_DIR/data\"\n"
                       "  bind_address = \"x$SIGIL_TEST_UNSET_VAR_XYZ$\"\n"
                       "}\n"
                       "plugins {\n"
                       "  DataStore \"sql\" { plugin_data { database_type = \"sqlite3\"\n"
                       "    connection_string = \"$SIGIL_TEST_DIR/db\" } }\n"
                       "  NodeAttestor \"join_token\" {}\n"
                       "  KeyManager \"memory\" {}\n"
                       "}\n";
    const char *path;
    sg_server_config s;
    sg_err err;

    setenv("SIGIL_TEST_TD", "env.example.org", 1);
    setenv("SIGIL_TEST_DIR", "/srv", 1);
    unsetenv("SIGIL_TEST_UNSET_VAR_XYZ");
    path = write_conf("server.conf", text);
    sg_err_clear(&err);
    if (sg_server_config_load(path, true, &s, &err) != 0) {
        fprintf(stderr, "  %s\n", err.msg);
        exit(1);
    }
    ASSERT_STREQ(s.trust_domain, "env.example.org");
    ASSERT_STREQ(s.data_dir, "/srv/data");
    ASSERT_STREQ(s.db_connection_string, "/srv/db");
    ASSERT_STREQ(s.bind_address, "x$");
    sg_server_config_cleanup(&s);
    /* Without -expandEnv the text is taken literally, so the trust domain is invalid. */
    ASSERT_EQ(sg_server_config_load(path, false, &s, &err), SG_ECONFIG);
    ASSERT(strstr(err.msg, "server.conf:2: trust_domain") != NULL);
}

TEST(config_missing_file_and_syntax_error)
{
    sg_server_config s;
    sg_err err;

    ASSERT_EQ(sg_server_config_load("/nonexistent/sigil/server.conf", false, &s, &err), SG_ECONFIG);
    ASSERT(strstr(err.msg, "/nonexistent/sigil/server.conf") != NULL);
    server_bad("server {\n  bind_port 80\n}\n",
               "server.conf:2: expected '=' or '{' after key \"bind_port\"");
}

TEST(config_overrides_apply_before_checks)
{
    /* An empty log_level (e.g. an unset $VAR) is fine when a flag replaces it. */
    char text[2048];
    snprintf(text, sizeof text,
             "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/tmp/d\"\n"
             "  log_level = \"\"\n}\n%s",
             SERVER_TAIL);
    const char *path = write_conf("override.conf", text);
    sg_server_config s;
    sg_err err;
    ASSERT_EQ(sg_server_config_load(path, false, &s, &err), SG_ECONFIG);
    const sg_config_override ov[] = {
        {"log_level", "warn"}, {"trust_domain", "other.org"}, {"bind_port", "9090"}};
    ASSERT_OK(sg_server_config_load_with(path, false, ov, 3, &s, &err));
    ASSERT_EQ(s.log_level, SG_LOG_WARN);
    ASSERT_STREQ(s.trust_domain, "other.org");
    ASSERT_EQ(s.bind_port, 9090);
    sg_server_config_cleanup(&s);
    /* A bad flag value is checked like a file value. */
    const sg_config_override bad[] = {{"log_level", "warn"}, {"bind_port", "99999"}};
    ASSERT_EQ(sg_server_config_load_with(path, false, bad, 2, &s, &err), SG_ECONFIG);
    ASSERT(strstr(err.msg, "99999") != NULL || strstr(err.msg, "port") != NULL);
}

TEST(config_server_jwt_keys)
{
    const char *td = "trust_domain = \"example.org\"\ndata_dir = \"/d\"\n";
    char body[1024];
    sg_server_config s;
    sg_err err;

    /* Defaults: SPIRE's five minutes, no issuer, the key type of ca_key_type. */
    ASSERT_OK(load_server(td, &s, &err));
    ASSERT_EQ(s.default_jwt_svid_ttl_s, 300);
    ASSERT(s.jwt_issuer == NULL);
    ASSERT_EQ(s.jwt_key_type, SG_KEY_EC_P256);
    ASSERT_EQ(s.jwt_alg, SG_JWT_ES256);
    sg_server_config_cleanup(&s);
    snprintf(body, sizeof body, "%sca_key_type = \"ec-p384\"\n", td);
    ASSERT_OK(load_server(body, &s, &err));
    ASSERT_EQ(s.jwt_key_type, SG_KEY_EC_P384);
    ASSERT_EQ(s.jwt_alg, SG_JWT_ES384);
    sg_server_config_cleanup(&s);

    snprintf(body, sizeof body,
             "%sjwt_key_type = \"PS256\"\ndefault_jwt_svid_ttl = \"10m\"\n"
             "jwt_issuer = \"https://oidc.example.org\"\n",
             td);
    ASSERT_OK(load_server(body, &s, &err));
    ASSERT_EQ(s.jwt_key_type, SG_KEY_RSA_2048);
    ASSERT_EQ(s.jwt_alg, SG_JWT_PS256);
    ASSERT_EQ(s.default_jwt_svid_ttl_s, 600);
    ASSERT_STREQ(s.jwt_issuer, "https://oidc.example.org");
    sg_server_config_cleanup(&s);

    snprintf(body, sizeof body, "%sjwt_key_type = \"HS256\"\n", td);
    server_body_bad(body, "server.conf:4: jwt_key_type: invalid jwt_key_type \"HS256\"");
    snprintf(body, sizeof body, "%sdefault_jwt_svid_ttl = \"5x\"\n", td);
    server_body_bad(body, "server.conf:4: default_jwt_svid_ttl: unknown unit");
    snprintf(body, sizeof body,
             "%sca_ttl = \"2h\"\ndefault_x509_svid_ttl = \"1h\"\ndefault_jwt_svid_ttl = \"2h\"\n",
             td);
    server_body_bad(body, "server.conf:6: default_jwt_svid_ttl (7200s) must be shorter than "
                          "ca_ttl (7200s)");
    snprintf(body, sizeof body, "%sjwt_issuer = \"\"\n", td);
    server_body_bad(body, "server.conf:4: jwt_issuer must not be empty");
    snprintf(body, sizeof body, "%sjwt_issuer = 3\n", td);
    server_body_bad(body, "server.conf:4: jwt_issuer must be a string");
}

TEST(config_server_short_ca_ttl_keeps_the_default_jwt_ttl)
{
    sg_server_config s;
    sg_err err;

    /* Tokens are capped by their key (ca_ttl): only an explicit value is checked. */
    ASSERT_OK(load_server("trust_domain = \"example.org\"\ndata_dir = \"/d\"\nca_ttl = \"60s\"\n"
                          "default_x509_svid_ttl = \"20s\"\n",
                          &s, &err));
    ASSERT_EQ(s.default_jwt_svid_ttl_s, 300);
    sg_server_config_cleanup(&s);
}
