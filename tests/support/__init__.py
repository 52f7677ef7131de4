"""What the tests share: the fake upstream, live servers, free ports, stream readers."""
