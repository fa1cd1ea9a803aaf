/*
 * Unit tests for agent/jwt_cache.c: keys by entry and audience set,
 * refresh at half-life, never serving expired tokens, LRU bound, taint
 * and entry-change pruning, audience checks.
 */
#include "agent/jwt_cache.h"
#include "test/runner.h"

#include <stdio.h>
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
