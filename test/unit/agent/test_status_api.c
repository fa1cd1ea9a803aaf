/*
 * Unit tests for agent/status_api.c: the serving decision, outage
 * bookkeeping and the masking of secrets out of errors shown on the
 * world-accessible socket.
 */
#include "agent/status_api.h"
#include "test/runner.h"

#include <string.h>

TEST(status_api_serving_needs_svid_and_bundle)
{
    sg_agent_status s;
    memset(&s, 0, sizeof(s));
    ASSERT(!sg_agent_status_serving(&s, true, 100));
    s.attested = true;
    s.agent_svid_expires_at = 200;
    ASSERT(sg_agent_status_serving(&s, true, 100));
    ASSERT(!sg_agent_status_serving(&s, false, 100));
    ASSERT(!sg_agent_status_serving(&s, true, 200));
}

TEST(status_api_serving_survives_unreachable_server)
{
    sg_agent_status s;
    memset(&s, 0, sizeof(s));
    s.attested = true;
    s.agent_svid_expires_at = 500;
    sg_agent_status_contact(&s, 100);
    sg_agent_status_failure(&s, 110, "UNAVAILABLE: connection refused", NULL);
    ASSERT(sg_agent_status_serving(&s, true, 120));
    ASSERT(!s.server_reachable);
    ASSERT_EQ(s.last_server_contact, 100);
}

TEST(status_api_outage_start_kept_until_contact)
{
    sg_agent_status s;
    memset(&s, 0, sizeof(s));
    sg_agent_status_contact(&s, 100);
    ASSERT(s.server_reachable);
    ASSERT_EQ(s.unreachable_since, 0);
    sg_agent_status_failure(&s, 110, "first", NULL);
    sg_agent_status_failure(&s, 130, "second", NULL);
    ASSERT_EQ(s.unreachable_since, 110);
    ASSERT_STREQ(s.last_error, "second");
    sg_agent_status_contact(&s, 140);
    ASSERT(s.server_reachable);
    ASSERT_EQ(s.unreachable_since, 0);
    ASSERT_EQ(s.last_server_contact, 140);
    ASSERT_STREQ(s.last_error, "");
}

TEST(status_api_outage_before_first_contact)
{
    sg_agent_status s;
    memset(&s, 0, sizeof(s));
    sg_agent_status_failure(&s, 50, "down", NULL);
    ASSERT_EQ(s.unreachable_since, 50);
    sg_agent_status_failure(&s, 60, "down", NULL);
    ASSERT_EQ(s.unreachable_since, 50);
}

TEST(status_api_redact_masks_token_and_ids)
{
    char out[256];
    sg_status_redact(out, sizeof(out),
                     "agent \"spiffe://example.org/spire/agent/join_token/abc-123\" refused; "
                     "token abc-123 used",
                     "abc-123");
    ASSERT_STREQ(out, "agent \"<spiffe id>\" refused; token <join token> used");
    ASSERT(strstr(out, "abc-123") == NULL);
}

TEST(status_api_redact_without_token)
{
    char out[256];
    sg_status_redact(out, sizeof(out), "SPIFFE://td/x, then", NULL);
    ASSERT_STREQ(out, "<spiffe id>, then");
    sg_status_redact(out, sizeof(out), "plain message", "");
    ASSERT_STREQ(out, "plain message");
}

TEST(status_api_redact_truncates)
{
    char out[8];
    sg_status_redact(out, sizeof(out), "0123456789", NULL);
    ASSERT_STREQ(out, "0123456");
    sg_status_redact(out, sizeof(out), "spiffe://a/b", NULL);
    ASSERT_STREQ(out, "<spiffe");
}
