"""Intervention variants, one module per variant; each registers itself with `@register_variant(name)`.

Every module here is imported by `interventions.registry.discover_variants()`."""
