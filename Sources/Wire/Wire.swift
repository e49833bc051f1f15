// Agent <-> collector API types (docs/API.md).
