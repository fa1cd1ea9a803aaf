/*
 * Datastore tests for federation: entries' federates_with, federated
 * bundles (sequence never backwards, kept across reopen, delete modes)
 * and federation relationships.
 */
#include "server/datastore.h"

#include "test/runner.h"

static char fed_db_path[512];

static sg_datastore *fed_open(void)
{
    sg_datastore *ds = NULL;
    sg_err err;

    snprintf(fed_db_path, sizeof fed_db_path, "%s/fed.sqlite3", sg_test_tmpdir());
    if (sg_datastore_open(&ds, "sqlite3", fed_db_path, &err) != 0)
        SG__FAIL("open: %s", err.msg);
    return ds;
}

/* An entry federating with the nfed trust domain IDs in fed. */
static void fed_entry(sg_entry *e, const char *spiffe, const char **fed, size_t nfed)
{
    memset(e, 0, sizeof *e);
    e->spiffe_id = strdup(spiffe);
    e->parent_id = strdup("spiffe://example.org/spire/agent/join_token/x");
    e->selectors = calloc(1, sizeof *e->selectors);
    e->selectors[0].type = strdup("unix");
    e->selectors[0].value = strdup("uid:1000");
    e->nselectors = 1;
    if (nfed > 0) {
        e->federates_with = calloc(nfed, sizeof(char *));
        for (size_t i = 0; i < nfed; i++)
            e->federates_with[i] = strdup(fed[i]);
        e->nfederates_with = nfed;
    }
}

static const char *JWKS = "{\"keys\":[]}";

TEST(datastore_fed_bundle_sequence_never_goes_back)
{
    sg_datastore *ds = fed_open();
    sg_fed_bundle_rec b;
    bool changed = false;
    sg_err err;

    ASSERT_OK(sg_ds_fed_bundle_put(ds, "other.org", JWKS, 5, &changed, &err));
    ASSERT(changed);
    uint64_t g = sg_ds_fed_bundle_gen(ds);
    /* The same bundle again changes nothing. */
    ASSERT_OK(sg_ds_fed_bundle_put(ds, "other.org", JWKS, 5, &changed, &err));
    ASSERT(!changed);
    ASSERT_EQ(sg_ds_fed_bundle_gen(ds), g);
    /* An older sequence is refused and names both numbers. */
    ASSERT_EQ(sg_ds_fed_bundle_put(ds, "other.org", "{\"keys\":[1]}", 4, &changed, &err),
              SG_EINVAL);
    ASSERT(strstr(err.msg, "older") != NULL);
    ASSERT(!changed);
    ASSERT_OK(sg_ds_fed_bundle_put(ds, "other.org", "{\"keys\":[2]}", 6, &changed, &err));
    ASSERT(changed);
    ASSERT(sg_ds_fed_bundle_gen(ds) > g);
    sg_datastore_close(ds);

    /* Kept across a reopen. */
    ASSERT_OK(sg_datastore_open(&ds, "sqlite3", fed_db_path, &err));
    ASSERT_OK(sg_ds_fed_bundle_get(ds, "other.org", &b, &err));
    ASSERT_STREQ(b.jwks, "{\"keys\":[2]}");
    ASSERT_EQ(b.sequence, 6);
    sg_fed_bundle_rec_cleanup(&b);
    sg_datastore_close(ds);
}

TEST(datastore_fed_bundle_bad_input)
{
    sg_datastore *ds = fed_open();
    sg_fed_bundle_rec *list = NULL;
    size_t n = 9;
    sg_err err;

    ASSERT_EQ(sg_ds_fed_bundle_put(ds, "spiffe://other.org", JWKS, 1, NULL, &err), SG_EINVAL);
    ASSERT_EQ(sg_ds_fed_bundle_put(ds, "Bad Domain", JWKS, 1, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "Bad Domain") != NULL);
    ASSERT_EQ(sg_ds_fed_bundle_put(ds, "other.org", "", 1, NULL, &err), SG_EINVAL);
    ASSERT_EQ(sg_ds_fed_bundle_get(ds, "missing.org", &(sg_fed_bundle_rec){0}, &err), SG_ENOENT);
    ASSERT_OK(sg_ds_fed_bundle_list(ds, &list, &n, &err));
    ASSERT_EQ(n, 0);
    sg_fed_bundle_rec_list_free(list, n);
    sg_datastore_close(ds);
}

TEST(datastore_entry_federates_with_needs_bundle)
{
    sg_datastore *ds = fed_open();
    const char *fed[] = {"spiffe://other.org", "spiffe://b.org", "spiffe://other.org"};
    sg_entry e, got;
    sg_err err;

    fed_entry(&e, "spiffe://example.org/web", fed, 3);
    ASSERT_EQ(sg_ds_entry_create(ds, &e, &err), SG_ENOENT);
    ASSERT(strstr(err.msg, "spiffe://") != NULL);
    ASSERT_OK(sg_ds_fed_bundle_put(ds, "other.org", JWKS, 1, NULL, &err));
    ASSERT_OK(sg_ds_fed_bundle_put(ds, "b.org", JWKS, 1, NULL, &err));
    ASSERT_OK(sg_ds_entry_create(ds, &e, &err));
    ASSERT_OK(sg_ds_entry_get(ds, e.id, &got, &err));
    /* Sorted, duplicates dropped. */
    ASSERT_EQ(got.nfederates_with, 2);
    ASSERT_STREQ(got.federates_with[0], "spiffe://b.org");
    ASSERT_STREQ(got.federates_with[1], "spiffe://other.org");
    sg_entry copy;
    ASSERT_OK(sg_entry_copy(&copy, &got));
    ASSERT_EQ(copy.nfederates_with, 2);
    ASSERT_STREQ(copy.federates_with[1], "spiffe://other.org");
    sg_entry_cleanup(&copy);
    sg_entry_cleanup(&got);

    /* Malformed values are refused with the value quoted. */
    free(e.federates_with[0]);
    e.federates_with[0] = strdup("spiffe://other.org/path");
    ASSERT_EQ(sg_ds_entry_update(ds, &e, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "other.org/path") != NULL);
    free(e.federates_with[0]);
    e.federates_with[0] = strdup("other.org");
    ASSERT_EQ(sg_ds_entry_update(ds, &e, &err), SG_EINVAL);
    sg_entry_cleanup(&e);
    sg_datastore_close(ds);
}

TEST(datastore_fed_bundle_delete_modes)
{
    sg_datastore *ds = fed_open();
    const char *fed[] = {"spiffe://other.org", "spiffe://b.org"};
    sg_entry e1, e2, got;
    size_t changed = 0;
    int64_t rev0, rev1;
    sg_err err;

    ASSERT_OK(sg_ds_fed_bundle_put(ds, "other.org", JWKS, 1, NULL, &err));
    ASSERT_OK(sg_ds_fed_bundle_put(ds, "b.org", JWKS, 1, NULL, &err));
    fed_entry(&e1, "spiffe://example.org/one", fed, 2);
    fed_entry(&e2, "spiffe://example.org/two", fed + 1, 1);
    ASSERT_OK(sg_ds_entry_create(ds, &e1, &err));
    ASSERT_OK(sg_ds_entry_create(ds, &e2, &err));

    ASSERT_EQ(sg_ds_fed_bundle_delete(ds, "other.org", SG_FED_DELETE_RESTRICT, &changed, &err),
              SG_EPERM);
    ASSERT(strstr(err.msg, "other.org") != NULL);
    sg_fed_bundle_rec kept;
    ASSERT_OK(sg_ds_fed_bundle_get(ds, "other.org", &kept, &err));
    sg_fed_bundle_rec_cleanup(&kept);

    ASSERT_OK(sg_ds_entry_revision(ds, &rev0, &err));
    ASSERT_OK(sg_ds_fed_bundle_delete(ds, "other.org", SG_FED_DELETE_DISSOCIATE, &changed, &err));
    ASSERT_EQ(changed, 1);
    ASSERT_OK(sg_ds_entry_revision(ds, &rev1, &err));
    ASSERT(rev1 > rev0);
    ASSERT_OK(sg_ds_entry_get(ds, e1.id, &got, &err));
    ASSERT_EQ(got.nfederates_with, 1);
    ASSERT_STREQ(got.federates_with[0], "spiffe://b.org");
    ASSERT(got.revision > e1.revision);
    sg_entry_cleanup(&got);
    ASSERT_EQ(sg_ds_fed_bundle_get(ds, "other.org", &(sg_fed_bundle_rec){0}, &err), SG_ENOENT);

    /* delete: entries federating with it go too (SPIRE's DELETE mode). */
    ASSERT_OK(sg_ds_fed_bundle_delete(ds, "b.org", SG_FED_DELETE_DELETE, &changed, &err));
    ASSERT_EQ(changed, 2);
    ASSERT_EQ(sg_ds_entry_get(ds, e1.id, &got, &err), SG_ENOENT);
    ASSERT_EQ(sg_ds_entry_get(ds, e2.id, &got, &err), SG_ENOENT);
    ASSERT_EQ(sg_ds_fed_bundle_delete(ds, "b.org", SG_FED_DELETE_DELETE, &changed, &err),
              SG_ENOENT);
    sg_entry_cleanup(&e1);
    sg_entry_cleanup(&e2);
    sg_datastore_close(ds);
}

TEST(datastore_fed_relationship_crud)
{
    sg_datastore *ds = fed_open();
    sg_fed_rel r = {.trust_domain = "other.org",
                    .url = "https://127.0.0.1:8443",
                    .profile = "https_spiffe",
                    .endpoint_spiffe_id = "spiffe://other.org/spire/server"};
    sg_fed_rel got, *list = NULL;
    size_t n = 0;
    sg_err err;

    ASSERT_OK(sg_ds_fed_rel_put(ds, &r, false, &err));
    ASSERT_EQ(sg_ds_fed_rel_put(ds, &r, false, &err), SG_EEXIST);
    ASSERT_OK(sg_ds_fed_rel_get(ds, "other.org", &got, &err));
    ASSERT_STREQ(got.url, "https://127.0.0.1:8443");
    ASSERT_STREQ(got.endpoint_spiffe_id, "spiffe://other.org/spire/server");
    sg_fed_rel_cleanup(&got);

    r.profile = "https_web";
    r.endpoint_spiffe_id = NULL;
    r.url = "https://other.org/bundle";
    ASSERT_OK(sg_ds_fed_rel_put(ds, &r, true, &err));
    ASSERT_OK(sg_ds_fed_rel_list(ds, &list, &n, &err));
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(list[0].profile, "https_web");
    ASSERT(list[0].endpoint_spiffe_id == NULL);
    sg_fed_rel_list_free(list, n);

    /* Bad input names the problem. */
    r.url = "http://other.org";
    ASSERT_EQ(sg_ds_fed_rel_put(ds, &r, true, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "https") != NULL);
    r.url = "https://";
    ASSERT_EQ(sg_ds_fed_rel_put(ds, &r, true, &err), SG_EINVAL);
    r.url = "https://x.org";
    r.profile = "https_spiffe";
    ASSERT_EQ(sg_ds_fed_rel_put(ds, &r, true, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "endpoint SPIFFE ID") != NULL);
    r.profile = "ftp";
    ASSERT_EQ(sg_ds_fed_rel_put(ds, &r, true, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "ftp") != NULL);
    r.profile = "https_web";
    r.trust_domain = "missing.org";
    ASSERT_EQ(sg_ds_fed_rel_put(ds, &r, true, &err), SG_ENOENT);

    ASSERT_OK(sg_ds_fed_rel_delete(ds, "other.org", &err));
    ASSERT_EQ(sg_ds_fed_rel_delete(ds, "other.org", &err), SG_ENOENT);
    sg_datastore_close(ds);
}
