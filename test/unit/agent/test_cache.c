/*
 * Unit tests for agent/cache.c: entry matching against workload selectors,
 * SVID bookkeeping across syncs, rotation due-lists and change notification.
 */
#include "agent/cache.h"
#include "test/runner.h"

#include <stdlib.h>
#include <string.h>

#define NOW 1000000

/* Builds an entry with selectors given as "type:value" strings (NULL-terminated). */
static sg_agent_entry make_entry(const char *id, const char *spiffe_id, int64_t revision,
                                 const char *const *sels)
{
    sg_agent_entry e;
    memset(&e, 0, sizeof(e));
    e.id = strdup(id);
    e.spiffe_id = strdup(spiffe_id);
    e.parent_id = strdup("spiffe://example.org/spire/agent/join_token/t");
    e.revision = revision;
    size_t n = 0;
    while (sels[n] != NULL)
        n++;
    e.selectors = calloc(n, sizeof(*e.selectors));
    for (size_t i = 0; i < n; i++) {
        if (sg_selector_parse(sels[i], &e.selectors[i], NULL) != 0)
            abort();
    }
    e.nselectors = n;
    return e;
}

static void set_entries2(sg_cache *c, sg_agent_entry a, sg_agent_entry b)
{
    sg_agent_entry *arr = calloc(2, sizeof(*arr));
    arr[0] = a;
    arr[1] = b;
    ASSERT_OK(sg_cache_set_entries(c, arr, 2, NULL));
}

static void set_entries1(sg_cache *c, sg_agent_entry a)
{
    sg_agent_entry *arr = calloc(1, sizeof(*arr));
    arr[0] = a;
    ASSERT_OK(sg_cache_set_entries(c, arr, 1, NULL));
}

static void put_svid(sg_cache *c, const char *entry_id, int64_t rev, const char *serial,
                     int64_t not_after)
{
    static uint8_t cert[] = {0x30, 0x03, 0x02, 0x01, 0x01};
    static uint8_t key[] = {0x30, 0x01, 0x00};
    sg_der chain[2] = {{cert, sizeof(cert)}, {cert, sizeof(cert)}};
    ASSERT_OK(sg_cache_put_svid(c, entry_id, rev, chain, 2, key, sizeof(key), not_after, NOW + 100,
                                serial, "aa01", NULL));
}

static void set_bundle(sg_cache *c, uint8_t byte)
{
    sg_agent_bundle b = {0};
    b.certs = calloc(1, sizeof(*b.certs));
    b.certs[0].data = malloc(4);
    memset(b.certs[0].data, byte, 4);
    b.certs[0].len = 4;
    b.n = 1;
    b.sequence = byte;
    ASSERT_OK(sg_cache_set_bundle(c, &b, NULL));
}

static void workload(sg_selector_set *set, const char *const *sels)
{
    for (size_t i = 0; sels[i] != NULL; i++) {
        sg_selector s;
        ASSERT_OK(sg_selector_parse(sels[i], &s, NULL));
        ASSERT_OK(sg_selector_set_add(set, s.type, s.value));
        sg_selector_cleanup(&s);
    }
}

static sg_cache *new_cache(void)
{
    sg_cache *c = NULL;
    ASSERT_OK(sg_cache_new(&c, "example.org", NULL));
    return c;
}

TEST(cache_match_requires_every_entry_selector)
{
    sg_cache *c = new_cache();
    set_entries2(c,
                 make_entry("e1", "spiffe://example.org/web", 1,
                            (const char *const[]){"unix:uid:1000", "unix:gid:50", NULL}),
                 make_entry("e2", "spiffe://example.org/db", 1,
                            (const char *const[]){"unix:uid:2000", NULL}));
    put_svid(c, "e1", 1, "01", NOW + 3600);
    put_svid(c, "e2", 1, "02", NOW + 3600);

    sg_selector_set only_uid = {0}, both = {0}, other = {0};
    workload(&only_uid, (const char *const[]){"unix:uid:1000", NULL});
    workload(&both, (const char *const[]){"unix:uid:1000", "unix:gid:50", "unix:user:web", NULL});
    workload(&other, (const char *const[]){"unix:uid:3000", "unix:gid:50", NULL});

    sg_cache_identity *ids;
    size_t n, ne;
    ASSERT_OK(sg_cache_match(c, &only_uid, NOW, &ids, &n, &ne));
    ASSERT_EQ(n, 0);
    ASSERT_EQ(ne, 0);
    free(ids);

    ASSERT_OK(sg_cache_match(c, &both, NOW, &ids, &n, &ne));
    ASSERT_EQ(n, 1);
    ASSERT_EQ(ne, 1);
    ASSERT_STREQ(ids[0].entry->id, "e1");
    ASSERT_STREQ(ids[0].svid->spiffe_id, "spiffe://example.org/web");
    ASSERT_EQ(ids[0].svid->chain_len, 10); /* two DER certificates concatenated */
    ASSERT_STREQ(ids[0].svid->serial, "01");
    free(ids);

    ASSERT_OK(sg_cache_match(c, &other, NOW, &ids, &n, &ne));
    ASSERT_EQ(n, 0);
    free(ids);

    sg_selector_set_cleanup(&only_uid);
    sg_selector_set_cleanup(&both);
    sg_selector_set_cleanup(&other);
    sg_cache_free(c);
}

TEST(cache_match_counts_entries_without_usable_svid)
{
    sg_cache *c = new_cache();
    set_entries2(
        c,
        make_entry("e1", "spiffe://example.org/a", 1, (const char *const[]){"unix:uid:1000", NULL}),
        make_entry("e2", "spiffe://example.org/b", 1,
                   (const char *const[]){"unix:uid:1000", NULL}));
    put_svid(c, "e2", 1, "02", NOW - 1); /* expired */
    sg_selector_set w = {0};
    workload(&w, (const char *const[]){"unix:uid:1000", NULL});
    sg_cache_identity *ids;
    size_t n, ne;
    ASSERT_OK(sg_cache_match(c, &w, NOW, &ids, &n, &ne));
    ASSERT_EQ(n, 0);
    ASSERT_EQ(ne, 2);
    free(ids);
    put_svid(c, "e1", 1, "01", NOW + 10);
    ASSERT_OK(sg_cache_match(c, &w, NOW, &ids, &n, &ne));
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(ids[0].svid->spiffe_id, "spiffe://example.org/a");
    free(ids);
    sg_selector_set_cleanup(&w);
    sg_cache_free(c);
}

TEST(cache_sync_keeps_svids_of_unchanged_entries)
{
    sg_cache *c = new_cache();
    set_entries2(
        c, make_entry("e1", "spiffe://example.org/a", 1, (const char *const[]){"unix:uid:1", NULL}),
        make_entry("e2", "spiffe://example.org/b", 1, (const char *const[]){"unix:uid:1", NULL}));
    put_svid(c, "e1", 1, "01", NOW + 3600);
    put_svid(c, "e2", 1, "02", NOW + 3600);
    ASSERT_EQ(sg_cache_nsvids(c), 2);
    /* e1 unchanged, e2 now names another SPIFFE ID, e3 is new. */
    sg_agent_entry *arr = calloc(3, sizeof(*arr));
    arr[0] =
        make_entry("e3", "spiffe://example.org/c", 1, (const char *const[]){"unix:uid:1", NULL});
    arr[1] =
        make_entry("e2", "spiffe://example.org/b2", 2, (const char *const[]){"unix:uid:1", NULL});
    arr[2] =
        make_entry("e1", "spiffe://example.org/a", 1, (const char *const[]){"unix:uid:1", NULL});
    ASSERT_OK(sg_cache_set_entries(c, arr, 3, NULL));
    ASSERT_EQ(sg_cache_nentries(c), 3);
    ASSERT_EQ(sg_cache_nsvids(c), 1);

    const sg_agent_entry **due;
    size_t n;
    ASSERT_OK(sg_cache_due(c, NOW, &due, &n));
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(due[0]->id, "e2");
    ASSERT_STREQ(due[1]->id, "e3");
    free(due);

    /* An SVID for an entry that has gone is refused. */
    sg_der d = {(uint8_t *)"x", 1};
    sg_err err = {0};
    ASSERT_EQ(sg_cache_put_svid(c, "gone", 1, &d, 1, (const uint8_t *)"k", 1, NOW + 5, NOW + 2,
                                "03", "aa01", &err),
              SG_ENOENT);
    ASSERT(strstr(err.msg, "gone") != NULL);
    sg_cache_free(c);
}

TEST(cache_due_lists_missing_revised_and_half_life_svids)
{
    sg_cache *c = new_cache();
    set_entries2(
        c, make_entry("e1", "spiffe://example.org/a", 1, (const char *const[]){"unix:uid:1", NULL}),
        make_entry("e2", "spiffe://example.org/b", 1, (const char *const[]){"unix:uid:1", NULL}));
    put_svid(c, "e1", 1, "01", NOW + 3600); /* renew_at NOW + 100 */
    const sg_agent_entry **due;
    size_t n;
    ASSERT_OK(sg_cache_due(c, NOW, &due, &n));
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(due[0]->id, "e2");
    free(due);
    put_svid(c, "e2", 1, "02", NOW + 3600);
    ASSERT_OK(sg_cache_due(c, NOW, &due, &n));
    ASSERT_EQ(n, 0);
    free(due);
    ASSERT_OK(sg_cache_due(c, NOW + 100, &due, &n));
    ASSERT_EQ(n, 2);
    free(due);
    /* A new revision of e1 (e.g. new DNS names) needs a new SVID at once. */
    set_entries2(
        c, make_entry("e1", "spiffe://example.org/a", 2, (const char *const[]){"unix:uid:1", NULL}),
        make_entry("e2", "spiffe://example.org/b", 1, (const char *const[]){"unix:uid:1", NULL}));
    ASSERT_OK(sg_cache_due(c, NOW, &due, &n));
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(due[0]->id, "e1");
    free(due);
    sg_cache_free(c);
}

typedef struct counter {
    int calls;
    bool unsubscribe;
    sg_cache_sub *sub;
} counter;

static void count_cb(sg_cache *c, sg_cache_sub *sub, void *user)
{
    counter *k = user;
    k->calls++;
    if (k->unsubscribe) {
        sg_cache_unsubscribe(c, sub);
        k->sub = NULL;
    }
}

TEST(cache_flush_notifies_only_changed_views)
{
    sg_cache *c = new_cache();
    set_bundle(c, 1);
    set_entries2(
        c, make_entry("e1", "spiffe://example.org/a", 1, (const char *const[]){"unix:uid:1", NULL}),
        make_entry("e2", "spiffe://example.org/b", 1, (const char *const[]){"unix:uid:2", NULL}));
    sg_selector_set w1 = {0}, w2 = {0};
    workload(&w1, (const char *const[]){"unix:uid:1", NULL});
    workload(&w2, (const char *const[]){"unix:uid:2", NULL});
    counter k1 = {0}, k2 = {0};
    ASSERT_OK(sg_cache_subscribe(c, SG_CACHE_WATCH_SVIDS, &w1, count_cb, &k1, NOW, &k1.sub, NULL));
    ASSERT_OK(sg_cache_subscribe(c, SG_CACHE_WATCH_SVIDS, &w2, count_cb, &k2, NOW, &k2.sub, NULL));
    ASSERT_EQ(sg_cache_nsubscribers(c), 2);

    sg_cache_flush(c, NOW); /* nothing changed */
    ASSERT_EQ(k1.calls, 0);
    ASSERT_EQ(k2.calls, 0);

    put_svid(c, "e1", 1, "01", NOW + 3600);
    sg_cache_flush(c, NOW);
    ASSERT_EQ(k1.calls, 1);
    ASSERT_EQ(k2.calls, 0);

    /* Rotation: a new serial for the same entry is a change. */
    put_svid(c, "e1", 1, "0a", NOW + 7200);
    sg_cache_flush(c, NOW);
    ASSERT_EQ(k1.calls, 2);
    ASSERT_EQ(k2.calls, 0);

    /* Same bundle bytes: no change; new bytes: everyone. */
    set_bundle(c, 1);
    sg_cache_flush(c, NOW);
    ASSERT_EQ(k1.calls, 2);
    set_bundle(c, 2);
    sg_cache_flush(c, NOW);
    ASSERT_EQ(k1.calls, 3);
    ASSERT_EQ(k2.calls, 1);

    /* The entry disappears: its workload is told (to end its stream). */
    set_entries1(c, make_entry("e2", "spiffe://example.org/b", 1,
                               (const char *const[]){"unix:uid:2", NULL}));
    sg_cache_flush(c, NOW);
    ASSERT_EQ(k1.calls, 4);
    ASSERT_EQ(k2.calls, 1);

    sg_cache_unsubscribe(c, k1.sub);
    sg_cache_unsubscribe(c, k2.sub);
    ASSERT_EQ(sg_cache_nsubscribers(c), 0);
    sg_selector_set_cleanup(&w1);
    sg_selector_set_cleanup(&w2);
    sg_cache_free(c);
}

TEST(cache_bundle_subscribers_ignore_svid_rotation)
{
    sg_cache *c = new_cache();
    set_bundle(c, 1);
    set_entries1(c, make_entry("e1", "spiffe://example.org/a", 1,
                               (const char *const[]){"unix:uid:1", NULL}));
    sg_selector_set w = {0};
    workload(&w, (const char *const[]){"unix:uid:1", NULL});
    counter k = {0};
    ASSERT_OK(sg_cache_subscribe(c, SG_CACHE_WATCH_BUNDLES, &w, count_cb, &k, NOW, &k.sub, NULL));
    put_svid(c, "e1", 1, "01", NOW + 3600);
    sg_cache_flush(c, NOW);
    ASSERT_EQ(k.calls, 0);
    set_bundle(c, 7);
    sg_cache_flush(c, NOW);
    ASSERT_EQ(k.calls, 1);
    size_t len;
    const uint8_t *der = sg_cache_bundle_der(c, &len);
    ASSERT_EQ(len, 4);
    ASSERT_EQ(der[0], 7);
    ASSERT_STREQ(sg_cache_bundle_name(c), "spiffe://example.org");
    sg_cache_unsubscribe(c, k.sub);
    sg_selector_set_cleanup(&w);
    sg_cache_free(c);
}

TEST(cache_unsubscribe_inside_notification)
{
    sg_cache *c = new_cache();
    set_entries1(c, make_entry("e1", "spiffe://example.org/a", 1,
                               (const char *const[]){"unix:uid:1", NULL}));
    sg_selector_set w = {0};
    workload(&w, (const char *const[]){"unix:uid:1", NULL});
    counter a = {.unsubscribe = true}, b = {.unsubscribe = true};
    ASSERT_OK(sg_cache_subscribe(c, SG_CACHE_WATCH_SVIDS, &w, count_cb, &a, NOW, &a.sub, NULL));
    ASSERT_OK(sg_cache_subscribe(c, SG_CACHE_WATCH_SVIDS, &w, count_cb, &b, NOW, &b.sub, NULL));
    put_svid(c, "e1", 1, "01", NOW + 3600);
    sg_cache_flush(c, NOW);
    ASSERT_EQ(a.calls, 1);
    ASSERT_EQ(b.calls, 1);
    ASSERT_EQ(sg_cache_nsubscribers(c), 0);
    put_svid(c, "e1", 1, "02", NOW + 3600);
    sg_cache_flush(c, NOW);
    ASSERT_EQ(a.calls, 1);
    sg_selector_set_cleanup(&w);
    sg_cache_free(c); /* also frees nothing twice */
}

TEST(cache_unsubscribe_from_head_middle_and_tail)
{
    sg_cache *c = new_cache();
    set_entries1(c, make_entry("e1", "spiffe://example.org/a", 1,
                               (const char *const[]){"unix:uid:1", NULL}));
    sg_selector_set w = {0};
    workload(&w, (const char *const[]){"unix:uid:1", NULL});
    counter k[3] = {0};
    for (int i = 0; i < 3; i++)
        ASSERT_OK(
            sg_cache_subscribe(c, SG_CACHE_WATCH_SVIDS, &w, count_cb, &k[i], NOW, &k[i].sub, NULL));
    sg_cache_unsubscribe(c, k[1].sub); /* middle */
    put_svid(c, "e1", 1, "01", NOW + 3600);
    sg_cache_flush(c, NOW);
    ASSERT_EQ(k[0].calls, 1);
    ASSERT_EQ(k[1].calls, 0);
    ASSERT_EQ(k[2].calls, 1);
    sg_cache_unsubscribe(c, k[2].sub); /* newest: the head */
    put_svid(c, "e1", 1, "02", NOW + 3600);
    sg_cache_flush(c, NOW);
    ASSERT_EQ(k[0].calls, 2);
    ASSERT_EQ(k[2].calls, 1);
    sg_cache_unsubscribe(c, k[0].sub); /* the last one */
    ASSERT_EQ(sg_cache_nsubscribers(c), 0);
    put_svid(c, "e1", 1, "03", NOW + 3600);
    sg_cache_flush(c, NOW);
    ASSERT_EQ(k[0].calls, 2);
    sg_selector_set_cleanup(&w);
    sg_cache_free(c);
}

TEST(cache_has_no_bundle_until_one_is_set)
{
    sg_cache *c = new_cache();
    ASSERT(!sg_cache_has_bundle(c));
    size_t len = 99;
    ASSERT(sg_cache_bundle_der(c, &len) == NULL);
    ASSERT_EQ(len, 0);
    set_bundle(c, 3);
    ASSERT(sg_cache_has_bundle(c));
    sg_cache_free(c);
}

TEST(cache_taint_makes_svids_of_that_authority_due)
{
    sg_cache *c = NULL;
    sg_err err = {0};
    const sg_agent_entry **due = NULL;
    size_t n = 0;
    char *tainted[] = {(char *)"bb02", (char *)"aa01"};
    char *other[] = {(char *)"cc03"};

    ASSERT_OK(sg_cache_new(&c, "example.org", &err));
    static const char *const sels[] = {"unix:uid:1", NULL};
    set_entries1(c, make_entry("e0", "spiffe://example.org/w", 1, sels));
    put_svid(c, "e0", 1, "01", NOW + 1000);
    ASSERT_OK(sg_cache_due(c, NOW, &due, &n));
    free(due);
    ASSERT_EQ(n, 0);
    ASSERT_EQ(sg_cache_taint(c, other, 1), 0);
    ASSERT_EQ(sg_cache_taint(c, tainted, 2), 1);
    ASSERT_OK(sg_cache_due(c, NOW, &due, &n));
    free(due);
    ASSERT_EQ(n, 1);
    ASSERT(sg_cache_next_due(c) <= NOW);
    sg_cache_free(c);
}
