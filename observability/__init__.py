"""OpenTelemetry set-up shared by every kzero process."""
