//! Parser unit tests: every header form the proxy core issue lists, and every rejection.
