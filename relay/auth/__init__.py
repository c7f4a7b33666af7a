"""Room- and role-scoped tokens and the access policy built on them."""
