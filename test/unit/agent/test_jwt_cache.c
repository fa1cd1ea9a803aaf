/*
 * Unit tests for agent/jwt_cache.c: keys by entry and audience set,
 * refresh at half-life, never serving expired tokens, LRU bound, taint
 * and entry-change pruning, audience checks. Also the JWT side of
 * agent/cache.c: own JWT keys, federated bundles and who is told when
 * they change.
 */
#include "agent/cache.h"
#include "agent/jwt_cache.h"
#include "common/key.h"
#include "test/runner.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T0 1000000

static sg_jwt_cache *new_cache(size_t max)
{
    sg_jwt_cache *c = NULL;
    if (sg_jwt_cache_new(&c, max, NULL) != 0)
        return NULL;
    return c;
}

static int put(sg_jwt_cache *c, const char *entry, int64_t rev, const char *const *aud, size_t naud,
               const char *token, const char *kid)
{
    return sg_jwt_cache_put(c, entry, rev, aud, naud, "spiffe://example.org/w", token, kid, T0,
                            T0 + 300, NULL);
}

TEST(jwt_cache_audience_set_ignores_order_and_duplicates)
{
    sg_jwt_cache *c = new_cache(0);
    ASSERT(c != NULL);
    const char *ab[] = {"a", "b"};
    const char *ba[] = {"b", "a", "b"};
    const char *a[] = {"a"};
    ASSERT_OK(put(c, "e1", 1, ab, 2, "tok-ab", "k1"));
    const sg_jwt_cache_token *t = sg_jwt_cache_get(c, "e1", 1, ba, 3, T0 + 10, true);
    ASSERT(t != NULL);
    ASSERT_STREQ(t->token, "tok-ab");
    ASSERT_STREQ(t->spiffe_id, "spiffe://example.org/w");
    ASSERT(sg_jwt_cache_get(c, "e1", 1, a, 1, T0 + 10, true) == NULL);
    ASSERT(sg_jwt_cache_get(c, "e2", 1, ab, 2, T0 + 10, true) == NULL);
    /* The same key replaces, never duplicates. */
    ASSERT_OK(put(c, "e1", 1, ba, 3, "tok-ab2", "k1"));
    ASSERT_EQ(sg_jwt_cache_size(c), 1);
    ASSERT_STREQ(sg_jwt_cache_get(c, "e1", 1, ab, 2, T0 + 10, true)->token, "tok-ab2");
    sg_jwt_cache_free(c);
}

TEST(jwt_cache_audience_boundaries_cannot_collide)
{
    sg_jwt_cache *c = new_cache(0);
    const char *one[] = {"ab"};
    const char *two[] = {"a", "b"};
    ASSERT_OK(put(c, "e", 1, one, 1, "tok-one", "k"));
    ASSERT(sg_jwt_cache_get(c, "e", 1, two, 2, T0, true) == NULL);
    sg_jwt_cache_free(c);
}

TEST(jwt_cache_refreshes_at_half_life_never_serves_expired)
{
    sg_jwt_cache *c = new_cache(0);
    const char *a[] = {"aud"};
    ASSERT_OK(put(c, "e", 1, a, 1, "tok", "k")); /* T0 .. T0+300 */
    ASSERT(sg_jwt_cache_get(c, "e", 1, a, 1, T0 + 149, true) != NULL);
    ASSERT(sg_jwt_cache_get(c, "e", 1, a, 1, T0 + 150, true) == NULL);
    /* Past half-life but unexpired: only as a fallback. */
    ASSERT(sg_jwt_cache_get(c, "e", 1, a, 1, T0 + 299, false) != NULL);
    ASSERT(sg_jwt_cache_get(c, "e", 1, a, 1, T0 + 300, false) == NULL);
    ASSERT(sg_jwt_cache_get(c, "e", 1, a, 1, T0 + 300, true) == NULL);
    ASSERT_EQ(sg_jwt_cache_expire(c, T0 + 300), 1);
    ASSERT_EQ(sg_jwt_cache_size(c), 0);
    sg_jwt_cache_free(c);
}

TEST(jwt_cache_evicts_least_recently_used)
{
    sg_jwt_cache *c = new_cache(3);
    const char *a[] = {"aud"};
    ASSERT_OK(put(c, "e1", 1, a, 1, "t1", "k"));
    ASSERT_OK(put(c, "e2", 1, a, 1, "t2", "k"));
    ASSERT_OK(put(c, "e3", 1, a, 1, "t3", "k"));
    /* e1 used last: e2 is now the least recently used. */
    ASSERT(sg_jwt_cache_get(c, "e1", 1, a, 1, T0, true) != NULL);
    ASSERT_OK(put(c, "e4", 1, a, 1, "t4", "k"));
    ASSERT_EQ(sg_jwt_cache_size(c), 3);
    ASSERT(sg_jwt_cache_get(c, "e2", 1, a, 1, T0, true) == NULL);
    ASSERT(sg_jwt_cache_get(c, "e1", 1, a, 1, T0, true) != NULL);
    ASSERT(sg_jwt_cache_get(c, "e3", 1, a, 1, T0, true) != NULL);
    ASSERT(sg_jwt_cache_get(c, "e4", 1, a, 1, T0, true) != NULL);
    sg_jwt_cache_free(c);
}

TEST(jwt_cache_bounded_under_many_keys)
{
    sg_jwt_cache *c = new_cache(50);
    for (int i = 0; i < 1000; i++) {
        char aud[32];
        snprintf(aud, sizeof(aud), "aud-%d", i);
        const char *a[] = {aud};
        ASSERT_OK(put(c, "e", 1, a, 1, "t", "k"));
    }
    ASSERT_EQ(sg_jwt_cache_size(c), 50);
    sg_jwt_cache_free(c);
}

TEST(jwt_cache_taint_drops_tokens_of_the_key)
{
    sg_jwt_cache *c = new_cache(0);
    const char *a[] = {"aud"};
    const char *b[] = {"other"};
    ASSERT_OK(put(c, "e1", 1, a, 1, "t1", "old"));
    ASSERT_OK(put(c, "e1", 1, b, 1, "t2", "new"));
    ASSERT_OK(put(c, "e2", 1, a, 1, "t3", "old"));
    char *kids[] = {"old"};
    ASSERT_EQ(sg_jwt_cache_taint(c, kids, 1), 2);
    ASSERT(sg_jwt_cache_get(c, "e1", 1, a, 1, T0, false) == NULL);
    ASSERT(sg_jwt_cache_get(c, "e1", 1, b, 1, T0, true) != NULL);
    ASSERT_EQ(sg_jwt_cache_taint(c, kids, 1), 0);
    sg_jwt_cache_free(c);
}

static bool keep_e1_rev2(void *ctx, const char *entry_id, int64_t revision)
{
    (void)ctx;
    return strcmp(entry_id, "e1") == 0 && revision == 2;
}

TEST(jwt_cache_entry_change_drops_tokens)
{
    sg_jwt_cache *c = new_cache(0);
    const char *a[] = {"aud"};
    ASSERT_OK(put(c, "e1", 1, a, 1, "t-old-rev", "k"));
    ASSERT_OK(put(c, "e2", 1, a, 1, "t-gone", "k"));
    /* A token minted for an older revision is not served for the new one. */
    ASSERT(sg_jwt_cache_get(c, "e1", 2, a, 1, T0, false) == NULL);
    ASSERT_EQ(sg_jwt_cache_prune(c, keep_e1_rev2, NULL), 2);
    ASSERT_EQ(sg_jwt_cache_size(c), 0);
    ASSERT_OK(put(c, "e1", 2, a, 1, "t-new", "k"));
    ASSERT_EQ(sg_jwt_cache_prune(c, keep_e1_rev2, NULL), 0);
    ASSERT_STREQ(sg_jwt_cache_get(c, "e1", 2, a, 1, T0, true)->token, "t-new");
    sg_jwt_cache_free(c);
}

TEST(jwt_cache_rejects_bad_audiences)
{
    sg_err e;
    sg_err_clear(&e);
    ASSERT_EQ(sg_jwt_cache_check_audience(NULL, 0, &e), SG_EINVAL);
    ASSERT(strstr(e.msg, "audience must be specified") != NULL);
    const char *empty[] = {"ok", ""};
    ASSERT_EQ(sg_jwt_cache_check_audience(empty, 2, &e), SG_EINVAL);
    ASSERT(strstr(e.msg, "audience 1 is empty") != NULL);
    char big[SG_JWT_CACHE_MAX_AUD_LEN + 2];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    const char *toolong[] = {big};
    ASSERT_EQ(sg_jwt_cache_check_audience(toolong, 1, &e), SG_EINVAL);
    const char *many[SG_JWT_CACHE_MAX_AUD + 1];
    for (size_t i = 0; i < SG_JWT_CACHE_MAX_AUD + 1; i++)
        many[i] = "a";
    ASSERT_EQ(sg_jwt_cache_check_audience(many, SG_JWT_CACHE_MAX_AUD + 1, &e), SG_EINVAL);
    sg_jwt_cache *c = new_cache(0);
    ASSERT_EQ(put(c, "e", 1, empty, 2, "t", "k"), SG_EINVAL);
    ASSERT_EQ(sg_jwt_cache_size(c), 0);
    sg_jwt_cache_free(c);
}

/* ------------------------------------------------------------ cache: JWT keys, federation */

static sg_jwt_key *new_keys(const char *const *kids, size_t n)
{
    sg_jwt_key *k = calloc(n ? n : 1, sizeof(*k));
    for (size_t i = 0; i < n; i++) {
        EVP_PKEY *key = NULL;
        uint8_t *der = NULL;
        size_t len = 0;
        if (sg_key_generate(SG_KEY_EC_P256, &key, NULL) != 0 ||
            sg_key_to_spki_der(key, &der, &len, NULL) != 0)
            abort();
        EVP_PKEY_free(key);
        k[i].kid = strdup(kids[i]);
        k[i].spki.data = malloc(len);
        memcpy(k[i].spki.data, der, len);
        k[i].spki.len = len;
        OPENSSL_free(der);
    }
    return k;
}

static sg_bundle *new_fed(const char *td, const char *kid)
{
    sg_bundle *b = calloc(1, sizeof(*b));
    b->trust_domain = strdup(td);
    const char *kids[] = {kid};
    b->jwt = new_keys(kids, 1);
    b->njwt = 1;
    return b;
}

static sg_agent_entry fed_entry(const char *id, const char *uid, const char *const *feds,
                                size_t nfeds)
{
    sg_agent_entry e;
    memset(&e, 0, sizeof(e));
    e.id = strdup(id);
    e.spiffe_id = strdup("spiffe://example.org/w");
    e.parent_id = strdup("spiffe://example.org/spire/agent/x");
    e.revision = 1;
    e.selectors = calloc(1, sizeof(*e.selectors));
    if (sg_selector_init(&e.selectors[0], "unix", uid, NULL) != 0)
        abort();
    e.nselectors = 1;
    e.federates_with = calloc(nfeds ? nfeds : 1, sizeof(char *));
    for (size_t i = 0; i < nfeds; i++)
        e.federates_with[i] = strdup(feds[i]);
    e.nfederates = nfeds;
    return e;
}

static void count_cb(sg_cache *c, sg_cache_sub *sub, void *user)
{
    (void)c;
    (void)sub;
    (*(int *)user)++;
}

TEST(cache_federated_bundle_changes_reach_only_federating_watchers)
{
    sg_cache *c = NULL;
    ASSERT_OK(sg_cache_new(&c, "example.org", NULL));
    const char *feds[] = {"other.test", "third.test", "other.test"};
    sg_agent_entry *es = calloc(2, sizeof(*es));
    es[0] = fed_entry("e1", "uid:1", feds, 3);
    es[1] = fed_entry("e2", "uid:2", NULL, 0);
    ASSERT_OK(sg_cache_set_entries(c, es, 2, NULL));
    sg_selector_set s1 = {0}, s2 = {0};
    ASSERT_OK(sg_selector_set_add(&s1, "unix", "uid:1"));
    ASSERT_OK(sg_selector_set_add(&s2, "unix", "uid:2"));
    int n1 = 0, n2 = 0, nx = 0;
    sg_cache_sub *a = NULL, *b = NULL, *x = NULL;
    ASSERT_OK(sg_cache_subscribe(c, SG_CACHE_WATCH_JWT_BUNDLES, &s1, count_cb, &n1, T0, &a, NULL));
    ASSERT_OK(sg_cache_subscribe(c, SG_CACHE_WATCH_JWT_BUNDLES, &s2, count_cb, &n2, T0, &b, NULL));
    ASSERT_OK(sg_cache_subscribe(c, SG_CACHE_WATCH_BUNDLES, &s1, count_cb, &nx, T0, &x, NULL));

    const char **tds = NULL;
    size_t ntds = 0;
    ASSERT_OK(sg_cache_federates_of(c, &s1, &tds, &ntds));
    ASSERT_EQ(ntds, 2);
    ASSERT_STREQ(tds[0], "other.test");
    ASSERT_STREQ(tds[1], "third.test");
    free(tds);

    /* A new foreign bundle: e1's watchers hear of it, e2's do not. */
    sg_bundle *fb = new_fed("other.test", "k1");
    ASSERT_OK(sg_cache_set_federated(c, fb, 1, NULL));
    sg_cache_flush(c, T0);
    ASSERT_EQ(n1, 1);
    ASSERT_EQ(n2, 0);
    ASSERT_EQ(nx, 1);
    const sg_cache_federated *f = sg_cache_federated_get(c, "other.test");
    ASSERT(f != NULL);
    ASSERT_STREQ(f->name, "spiffe://other.test");
    ASSERT(strstr(f->jwks, "\"k1\"") != NULL);
    ASSERT(sg_cache_jwt_bundle(c, "other.test") != NULL);
    ASSERT(sg_cache_jwt_bundle(c, "third.test") == NULL);

    /* Same keys, new sequence: nothing to tell. */
    fb = new_fed("other.test", "k1");
    sg_bundle *old = (sg_bundle *)sg_cache_federated_get(c, "other.test")->bundle;
    /* Reuse the held key so the authorities are identical. */
    free(fb->jwt[0].spki.data);
    fb->jwt[0].spki.data = malloc(old->jwt[0].spki.len);
    memcpy(fb->jwt[0].spki.data, old->jwt[0].spki.data, old->jwt[0].spki.len);
    fb->jwt[0].spki.len = old->jwt[0].spki.len;
    fb->sequence = 7;
    ASSERT_OK(sg_cache_set_federated(c, fb, 1, NULL));
    sg_cache_flush(c, T0);
    ASSERT_EQ(n1, 1);

    /* New key: told again; then removed: told again. */
    ASSERT_OK(sg_cache_set_federated(c, new_fed("other.test", "k2"), 1, NULL));
    sg_cache_flush(c, T0);
    ASSERT_EQ(n1, 2);
    ASSERT_OK(sg_cache_set_federated(c, NULL, 0, NULL));
    sg_cache_flush(c, T0);
    ASSERT_EQ(n1, 3);
    ASSERT_EQ(n2, 0);
    ASSERT(sg_cache_federated_get(c, "other.test") == NULL);
    sg_cache_unsubscribe(c, a);
    sg_cache_unsubscribe(c, b);
    sg_cache_unsubscribe(c, x);
    sg_selector_set_cleanup(&s1);
    sg_selector_set_cleanup(&s2);
    sg_cache_free(c);
}

TEST(cache_own_jwt_keys_notify_jwt_watchers_only)
{
    sg_cache *c = NULL;
    ASSERT_OK(sg_cache_new(&c, "example.org", NULL));
    sg_agent_entry *es = calloc(1, sizeof(*es));
    es[0] = fed_entry("e1", "uid:1", NULL, 0);
    ASSERT_OK(sg_cache_set_entries(c, es, 1, NULL));
    sg_selector_set s1 = {0};
    ASSERT_OK(sg_selector_set_add(&s1, "unix", "uid:1"));
    int nj = 0, nx = 0;
    sg_cache_sub *j = NULL, *x = NULL;
    ASSERT_OK(sg_cache_subscribe(c, SG_CACHE_WATCH_JWT_BUNDLES, &s1, count_cb, &nj, T0, &j, NULL));
    ASSERT_OK(sg_cache_subscribe(c, SG_CACHE_WATCH_BUNDLES, &s1, count_cb, &nx, T0, &x, NULL));
    size_t len = 0;
    ASSERT(strstr(sg_cache_jwt_jwks(c, &len), "\"keys\"") != NULL);
    ASSERT(sg_cache_jwt_bundle(c, "example.org") == NULL);
    const char *kids[] = {"own-1", "own-2"};
    ASSERT_OK(sg_cache_set_jwt_keys(c, new_keys(kids, 2), 2, NULL));
    sg_cache_flush(c, T0);
    ASSERT_EQ(nj, 1);
    ASSERT_EQ(nx, 0);
    const char *jwks = sg_cache_jwt_jwks(c, &len);
    ASSERT(strstr(jwks, "own-1") != NULL && strstr(jwks, "own-2") != NULL);
    const sg_bundle *own = sg_cache_jwt_bundle(c, "example.org");
    ASSERT(own != NULL);
    ASSERT(sg_bundle_find_jwt_key(own, "own-2") != NULL);
    /* A federated bundle can never stand in for the own trust domain. */
    ASSERT_OK(sg_cache_set_federated(c, new_fed("example.org", "evil"), 1, NULL));
    ASSERT(sg_cache_federated_get(c, "example.org") == NULL);
    ASSERT(sg_bundle_find_jwt_key(sg_cache_jwt_bundle(c, "example.org"), "evil") == NULL);
    sg_cache_unsubscribe(c, j);
    sg_cache_unsubscribe(c, x);
    sg_selector_set_cleanup(&s1);
    sg_cache_free(c);
}
