"""Tenants, API keys, quotas, the audit trail: the gateway stages of the request pipeline."""
