"""mcc toolchain: IR, pass infrastructure, pipeline text, driver and CLI."""
