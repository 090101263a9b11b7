"""Commands that live beside their pipeline stage register here on import."""
