"""Federation: partner authentication, membership, subscriptions (mirrors), sync and push."""
