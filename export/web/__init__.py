"""The web bundle: `bundle` publishes `web/` in an artifact directory; `explorer/` is the latent-space explorer
page it ships (package data)."""
