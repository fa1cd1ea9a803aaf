/*
 * Unit tests for the authorisation index (server/authorized.c): parent
 * chains, cycles, node aliases, exclusion of unrelated entries, caching
 * across snapshots, and agent serial checks.
 */
#include "server/authorized.h"
#include "test/runner.h"

#include <stdlib.h>
#include <string.h>

#define TD    "example.org"
#define AGENT "spiffe://example.org/spire/agent/join_token/tok1"
#define SRV   "spiffe://example.org/spire/server"

/* Builds a test entry with one selector "unix:uid:1000" unless sel is given. */
static void mk(sg_entry *e, const char *id, const char *spiffe_id, const char *parent,
               const char *sel_type, const char *sel_value)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->id, sizeof(e->id), "%s", id);
    e->spiffe_id = strdup(spiffe_id);
    e->parent_id = strdup(parent);
    e->selectors = calloc(1, sizeof(*e->selectors));
    e->selectors[0].type = strdup(sel_type ? sel_type : "unix");
    e->selectors[0].value = strdup(sel_value ? sel_value : "uid:1000");
    e->nselectors = 1;
}

static sg_authz *load(sg_entry *es, size_t n)
{
    sg_authz *a = NULL;
    sg_err err;
    ASSERT_OK(sg_authz_new(&a, TD, &err));
    ASSERT_OK(sg_authz_set_entries(a, es, n, 7, &err));
    for (size_t i = 0; i < n; i++)
        sg_entry_cleanup(&es[i]);
    return a;
}

static bool has(sg_authz_view *v, const char *id)
{
    return sg_authz_view_find(v, id) != NULL;
}

TEST(authorized_direct_children_only)
{
    sg_entry es[3];
    mk(&es[0], "a", "spiffe://example.org/w1", AGENT, NULL, NULL);
    mk(&es[1], "b", "spiffe://example.org/w2", "spiffe://example.org/spire/agent/other", NULL,
       NULL);
    mk(&es[2], "c", "spiffe://example.org/w3", "spiffe://example.org/unrelated", NULL, NULL);
    sg_authz *a = load(es, 3);
    sg_authz_view *v = NULL;
    sg_err err;
    ASSERT_OK(sg_authz_view_get(a, AGENT, NULL, 0, &v, &err));
    ASSERT_EQ(sg_authz_view_count(v), 1);
    ASSERT(has(v, "a"));
    ASSERT(!has(v, "b"));
    ASSERT(!has(v, "c"));
    ASSERT_EQ(sg_authz_view_revision(v), 7);
    sg_authz_view_release(v);
    sg_authz_free(a);
}

TEST(authorized_follows_chains_recursively)
{
    sg_entry es[4];
    mk(&es[0], "e1", "spiffe://example.org/node", AGENT, "spiffe_id", AGENT);
    mk(&es[1], "e2", "spiffe://example.org/mid", "spiffe://example.org/node", NULL, NULL);
    mk(&es[2], "e3", "spiffe://example.org/leaf", "spiffe://example.org/mid", NULL, NULL);
    mk(&es[3], "e4", "spiffe://example.org/x", "spiffe://example.org/elsewhere", NULL, NULL);
    sg_authz *a = load(es, 4);
    sg_authz_view *v = NULL;
    sg_err err;
    ASSERT_OK(sg_authz_view_get(a, AGENT, NULL, 0, &v, &err));
    ASSERT_EQ(sg_authz_view_count(v), 3);
    ASSERT(has(v, "e1") && has(v, "e2") && has(v, "e3"));
    ASSERT(!has(v, "e4"));
    /* Ordered by entry id. */
    ASSERT_STREQ(sg_authz_view_entry(v, 0)->id, "e1");
    ASSERT_STREQ(sg_authz_view_entry(v, 2)->id, "e3");
    sg_authz_view_release(v);
    sg_authz_free(a);
}

TEST(authorized_cycle_terminates)
{
    sg_entry es[3];
    mk(&es[0], "c1", "spiffe://example.org/x", AGENT, NULL, NULL);
    mk(&es[1], "c2", "spiffe://example.org/y", "spiffe://example.org/x", NULL, NULL);
    /* y -> x closes a loop; an entry whose SPIFFE ID is the agent's loops back too. */
    mk(&es[2], "c3", "spiffe://example.org/x", "spiffe://example.org/y", "unix", "uid:2");
    sg_authz *a = load(es, 3);
    sg_authz_view *v = NULL;
    sg_err err;
    ASSERT_OK(sg_authz_view_get(a, AGENT, NULL, 0, &v, &err));
    ASSERT_EQ(sg_authz_view_count(v), 3);
    sg_authz_view_release(v);
    sg_authz_free(a);
}

TEST(authorized_self_parented_cycle_excluded_when_unreachable)
{
    sg_entry es[2];
    mk(&es[0], "s1", "spiffe://example.org/loop", "spiffe://example.org/loop", NULL, NULL);
    mk(&es[1], "s2", "spiffe://example.org/w", AGENT, NULL, NULL);
    sg_authz *a = load(es, 2);
    sg_authz_view *v = NULL;
    sg_err err;
    ASSERT_OK(sg_authz_view_get(a, AGENT, NULL, 0, &v, &err));
    ASSERT_EQ(sg_authz_view_count(v), 1);
    ASSERT(has(v, "s2"));
    sg_authz_view_release(v);
    sg_authz_free(a);
}

TEST(authorized_node_alias_by_selectors)
{
    sg_entry es[4];
    mk(&es[0], "alias", "spiffe://example.org/cluster", SRV, "k8s_psat", "cluster:demo");
    mk(&es[1], "w", "spiffe://example.org/w", "spiffe://example.org/cluster", NULL, NULL);
    mk(&es[2], "other", "spiffe://example.org/other", SRV, "k8s_psat", "cluster:prod");
    mk(&es[3], "w2", "spiffe://example.org/w2", "spiffe://example.org/other", NULL, NULL);
    sg_authz *a = load(es, 4);
    sg_selector sel = {.type = "k8s_psat", .value = "cluster:demo"};
    sg_authz_view *v = NULL;
    sg_err err;
    ASSERT_OK(sg_authz_view_get(a, AGENT, &sel, 1, &v, &err));
    ASSERT_EQ(sg_authz_view_count(v), 2);
    ASSERT(has(v, "alias") && has(v, "w"));
    ASSERT(!has(v, "other") && !has(v, "w2"));
    sg_authz_view_release(v);

    /* An agent without that selector gets nothing. */
    ASSERT_OK(sg_authz_view_get(a, "spiffe://example.org/spire/agent/x", NULL, 0, &v, &err));
    ASSERT_EQ(sg_authz_view_count(v), 0);
    ASSERT(sg_authz_view_find(v, "alias") == NULL);
    sg_authz_view_release(v);
    sg_authz_free(a);
}

TEST(authorized_node_alias_by_implicit_spiffe_id_selector)
{
    sg_entry es[2];
    mk(&es[0], "n", "spiffe://example.org/mynode", SRV, "spiffe_id", AGENT);
    mk(&es[1], "w", "spiffe://example.org/w", "spiffe://example.org/mynode", NULL, NULL);
    sg_authz *a = load(es, 2);
    sg_authz_view *v = NULL;
    sg_err err;
    ASSERT_OK(sg_authz_view_get(a, AGENT, NULL, 0, &v, &err));
    ASSERT_EQ(sg_authz_view_count(v), 2);
    sg_authz_view_release(v);
    ASSERT_OK(sg_authz_view_get(a, "spiffe://example.org/spire/agent/join_token/tok2", NULL, 0, &v,
                                &err));
    ASSERT_EQ(sg_authz_view_count(v), 0);
    sg_authz_view_release(v);
    sg_authz_free(a);
}

TEST(authorized_alias_needs_all_selectors)
{
    sg_entry es[1];
    mk(&es[0], "al", "spiffe://example.org/n", SRV, "k8s_psat", "cluster:demo");
    /* Add a second selector the agent lacks. */
    es[0].selectors = realloc(es[0].selectors, 2 * sizeof(*es[0].selectors));
    es[0].selectors[1].type = strdup("k8s_psat");
    es[0].selectors[1].value = strdup("node:n1");
    es[0].nselectors = 2;
    sg_authz *a = load(es, 1);
    sg_selector sel = {.type = "k8s_psat", .value = "cluster:demo"};
    sg_authz_view *v = NULL;
    sg_err err;
    ASSERT_OK(sg_authz_view_get(a, AGENT, &sel, 1, &v, &err));
    ASSERT_EQ(sg_authz_view_count(v), 0);
    sg_authz_view_release(v);
    sg_authz_free(a);
}

TEST(authorized_view_survives_reload_and_cache_follows_revision)
{
    sg_entry es[1];
    mk(&es[0], "a", "spiffe://example.org/w1", AGENT, NULL, NULL);
    sg_authz *a = load(es, 1);
    sg_authz_view *v1 = NULL, *v1b = NULL, *v2 = NULL;
    sg_err err;
    ASSERT_OK(sg_authz_view_get(a, AGENT, NULL, 0, &v1, &err));
    ASSERT_OK(sg_authz_view_get(a, AGENT, NULL, 0, &v1b, &err));
    ASSERT(v1 == v1b); /* served from the cache */
    sg_authz_view_release(v1b);

    sg_entry es2[2];
    mk(&es2[0], "a", "spiffe://example.org/w1", AGENT, NULL, NULL);
    mk(&es2[1], "b", "spiffe://example.org/w2", AGENT, NULL, NULL);
    ASSERT_OK(sg_authz_set_entries(a, es2, 2, 9, &err));
    sg_entry_cleanup(&es2[0]);
    sg_entry_cleanup(&es2[1]);
    ASSERT_EQ(sg_authz_revision(a), 9);

    ASSERT_OK(sg_authz_view_get(a, AGENT, NULL, 0, &v2, &err));
    ASSERT_EQ(sg_authz_view_count(v2), 2);
    ASSERT_EQ(sg_authz_view_revision(v2), 9);
    /* The old view still reads its own snapshot. */
    ASSERT_EQ(sg_authz_view_count(v1), 1);
    ASSERT_STREQ(sg_authz_view_entry(v1, 0)->spiffe_id, "spiffe://example.org/w1");
    sg_authz_view_release(v1);
    sg_authz_view_release(v2);
    sg_authz_free(a);
}

TEST(authorized_forget_agent_drops_cached_view)
{
    sg_entry es[1];
    mk(&es[0], "al", "spiffe://example.org/n", SRV, "x", "y");
    sg_authz *a = load(es, 1);
    sg_authz_view *v = NULL;
    sg_err err;
    ASSERT_OK(sg_authz_view_get(a, AGENT, NULL, 0, &v, &err));
    ASSERT_EQ(sg_authz_view_count(v), 0);
    sg_authz_forget_agent(a, AGENT);
    /* Still valid after being dropped from the cache. */
    ASSERT_EQ(sg_authz_view_count(v), 0);
    sg_authz_view_release(v);
    sg_selector sel = {.type = "x", .value = "y"};
    ASSERT_OK(sg_authz_view_get(a, AGENT, &sel, 1, &v, &err));
    ASSERT_EQ(sg_authz_view_count(v), 1);
    sg_authz_view_release(v);
    sg_authz_free(a);
}

static void put_agent(sg_authz *a, const char *serial, bool banned)
{
    sg_agent_rec r;
    memset(&r, 0, sizeof(r));
    r.spiffe_id = (char *)AGENT;
    r.attestation_type = (char *)"join_token";
    snprintf(r.serial, sizeof(r.serial), "%s", serial);
    r.banned = banned;
    sg_err err;
    ASSERT_OK(sg_authz_agent_put(a, NULL, &r, &err));
}

TEST(authorized_agent_serial_rotation)
{
    sg_entry es[1];
    mk(&es[0], "a", "spiffe://example.org/w1", AGENT, NULL, NULL);
    sg_authz *a = load(es, 1);
    sg_err err;
    ASSERT_EQ(sg_authz_agent_auth(a, NULL, AGENT, "01", NULL, &err), SG_EPERM);
    ASSERT(strstr(err.msg, "not attested") != NULL);

    put_agent(a, "01", false);
    sg_authz_view *v = NULL;
    ASSERT_OK(sg_authz_agent_auth(a, NULL, AGENT, "01", &v, &err));
    ASSERT_EQ(sg_authz_view_count(v), 1);
    sg_authz_view_release(v);
    ASSERT_EQ(sg_authz_agent_auth(a, NULL, AGENT, "02", NULL, &err), SG_EPERM);

    ASSERT_OK(sg_authz_agent_renew(a, NULL, AGENT, "02", 100, &err));
    /* Both old and new are accepted until the new one is seen. */
    ASSERT_OK(sg_authz_agent_auth(a, NULL, AGENT, "01", NULL, &err));
    ASSERT_OK(sg_authz_agent_auth(a, NULL, AGENT, "02", NULL, &err));
    ASSERT_EQ(sg_authz_agent_auth(a, NULL, AGENT, "01", NULL, &err), SG_EPERM);
    ASSERT_OK(sg_authz_agent_auth(a, NULL, AGENT, "02", NULL, &err));
    sg_authz_free(a);
}

TEST(authorized_banned_and_evicted_agents_refused)
{
    sg_authz *a = load(NULL, 0);
    sg_err err;
    put_agent(a, "0a", true);
    ASSERT_EQ(sg_authz_agent_auth(a, NULL, AGENT, "0a", NULL, &err), SG_EPERM);
    ASSERT(strstr(err.msg, "banned") != NULL);
    put_agent(a, "0a", false);
    ASSERT_OK(sg_authz_agent_auth(a, NULL, AGENT, "0a", NULL, &err));
    sg_authz_forget_agent(a, AGENT);
    ASSERT_EQ(sg_authz_agent_auth(a, NULL, AGENT, "0a", NULL, &err), SG_EPERM);
    sg_authz_free(a);
}

TEST(authorized_agent_view_ignores_serial_and_tells_evicted_from_banned)
{
    sg_entry es[1];
    mk(&es[0], "a", "spiffe://example.org/w1", AGENT, NULL, NULL);
    sg_authz *a = load(es, 1);
    sg_err err;
    sg_authz_view *v = NULL;
    ASSERT_EQ(sg_authz_agent_view(a, NULL, AGENT, &v, &err), SG_ENOENT);
    ASSERT(v == NULL);
    put_agent(a, "01", false);
    ASSERT_OK(sg_authz_agent_renew(a, NULL, AGENT, "02", 100, &err));
    ASSERT_OK(sg_authz_agent_auth(a, NULL, AGENT, "02", NULL, &err));
    /* The old serial is refused for calls, but a stream's view does not care. */
    ASSERT_OK(sg_authz_agent_view(a, NULL, AGENT, &v, &err));
    ASSERT_EQ(sg_authz_view_count(v), 1);
    sg_authz_view_release(v);
    put_agent(a, "02", true);
    ASSERT_EQ(sg_authz_agent_view(a, NULL, AGENT, &v, &err), SG_EPERM);
    ASSERT(strstr(err.msg, "banned") != NULL);
    sg_authz_forget_agent(a, AGENT);
    ASSERT_EQ(sg_authz_agent_view(a, NULL, AGENT, &v, &err), SG_ENOENT);
    sg_authz_free(a);
}

TEST(authorized_many_entries_wide_tree)
{
    enum { N = 2000 };
    sg_entry *es = calloc(N, sizeof(*es));
    char id[40], sid[80], parent[80];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "id-%05d", i);
        snprintf(sid, sizeof(sid), "spiffe://example.org/w%d", i);
        /* Every even entry hangs off the agent; every odd one off its predecessor. */
        if (i % 2 == 0)
            snprintf(parent, sizeof(parent), "%s", AGENT);
        else
            snprintf(parent, sizeof(parent), "spiffe://example.org/w%d", i - 1);
        mk(&es[i], id, sid, parent, NULL, NULL);
    }
    sg_authz *a = load(es, N);
    free(es);
    sg_authz_view *v = NULL;
    sg_err err;
    ASSERT_OK(sg_authz_view_get(a, AGENT, NULL, 0, &v, &err));
    ASSERT_EQ(sg_authz_view_count(v), N);
    ASSERT(has(v, "id-01999"));
    ASSERT(!has(v, "id-02000"));
    sg_authz_view_release(v);
    sg_authz_free(a);
}
