"""What the tests share: helpers, fakes, servers the tests start, fixtures' parts."""
