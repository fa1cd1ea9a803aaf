/*
 * Admin message helpers: bundle conversions between sg_bundle and
 * sigil.admin.v1.Bundle in both directions, borrowing every byte.
 */
#include "server/admin_pb.h"

#include "test/runner.h"

static uint8_t cert_a[] = {0x30, 0x03, 0x02, 0x01, 0x01};
static uint8_t cert_b[] = {0x30, 0x03, 0x02, 0x01, 0x02};
static uint8_t spki[] = {0x30, 0x02, 0x05, 0x00};

static void sample(sg_bundle *b, sg_der *x509, sg_jwt_key *jwt)
{
    memset(b, 0, sizeof *b);
    x509[0] = (sg_der){cert_a, sizeof cert_a};
    x509[1] = (sg_der){cert_b, sizeof cert_b};
    jwt[0] = (sg_jwt_key){.kid = "k1", .spki = {spki, sizeof spki}, .expires_at = 1700000000};
    b->trust_domain = "example.org";
    b->x509 = x509;
    b->nx509 = 2;
    b->jwt = jwt;
    b->njwt = 1;
    b->sequence = 7;
    b->refresh_hint = 300;
}

TEST(admin_pb_bundle_init_borrows_every_field)
{
    sg_der x509[2];
    sg_jwt_key jwt[1];
    sg_bundle b;
    sg_admin_pb_bundle p;

    sample(&b, x509, jwt);
    ASSERT_OK(sg_admin_pb_bundle_init(&p, &b));
    ASSERT_STREQ(p.msg.trust_domain, "spiffe://example.org");
    ASSERT_EQ(p.msg.n_x509_authorities, 2);
    ASSERT(p.msg.x509_authorities[1].data == cert_b);
    ASSERT_EQ(p.msg.x509_authorities[1].len, sizeof cert_b);
    ASSERT_EQ(p.msg.n_jwt_authorities, 1);
    ASSERT_STREQ(p.msg.jwt_authorities[0]->kid, "k1");
    ASSERT(p.msg.jwt_authorities[0]->public_key.data == spki);
    ASSERT_EQ(p.msg.jwt_authorities[0]->expires_at, 1700000000);
    ASSERT_EQ(p.msg.sequence, 7);
    ASSERT_EQ(p.msg.refresh_hint, 300);
    sg_admin_pb_bundle_cleanup(&p);
}

TEST(admin_pb_bundle_view_round_trips)
{
    sg_der x509[2];
    sg_jwt_key jwt[1];
    sg_bundle b, v;
    sg_admin_pb_bundle p;
    sg_err err;

    sample(&b, x509, jwt);
    ASSERT_OK(sg_admin_pb_bundle_init(&p, &b));
    sg_err_clear(&err);
    ASSERT_OK(sg_admin_pb_bundle_view(&p.msg, "example.org", &v, &err));
    ASSERT_STREQ(v.trust_domain, "example.org");
    ASSERT_EQ(v.nx509, 2);
    ASSERT(v.x509[0].data == cert_a);
    ASSERT_EQ(v.njwt, 1);
    ASSERT_STREQ(v.jwt[0].kid, "k1");
    ASSERT_EQ(v.jwt[0].spki.len, sizeof spki);
    ASSERT_EQ(v.jwt[0].expires_at, 1700000000);
    ASSERT_EQ(v.sequence, 7);
    ASSERT_EQ(v.refresh_hint, 300);
    ASSERT(sg_bundle_same_keys(&b, &v));
    sg_admin_pb_bundle_view_cleanup(&v);
    ASSERT(v.x509 == NULL && v.jwt == NULL);
    sg_admin_pb_bundle_cleanup(&p);
}

TEST(admin_pb_bundle_empty)
{
    Sigil__Admin__V1__Bundle m = SIGIL__ADMIN__V1__BUNDLE__INIT;
    sg_bundle b, v;
    sg_admin_pb_bundle p;
    sg_err err;

    memset(&b, 0, sizeof b);
    ASSERT_OK(sg_admin_pb_bundle_init(&p, &b));
    ASSERT_STREQ(p.msg.trust_domain, "spiffe://");
    ASSERT_EQ(p.msg.n_x509_authorities, 0);
    ASSERT_EQ(p.msg.n_jwt_authorities, 0);
    sg_admin_pb_bundle_cleanup(&p);
    sg_err_clear(&err);
    ASSERT_OK(sg_admin_pb_bundle_view(&m, "td.test", &v, &err));
    ASSERT_EQ(v.nx509, 0);
    ASSERT_EQ(v.njwt, 0);
    sg_admin_pb_bundle_view_cleanup(&v);
}
