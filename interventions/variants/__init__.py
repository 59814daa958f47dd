"""Intervention variants, one module per variant; each registers itself and declares its traits
with `@register_variant(name, file_backed=..., transfer=..., controls=..., repeated_draws=...)`.

Every module here is imported by `interventions.registry.discover_variants()`."""
