"""The declarative inputs: families.yaml and releases/*.yaml."""
