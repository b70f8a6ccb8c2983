"""Research code beside the product: experiments with their own main() that use the service, the
store and the backbone together (an inference worker imports nothing from here)."""
