"""raylauncher: event-driven, ephemeral Ray clusters on AWS. The domain package."""
