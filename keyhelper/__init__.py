"""Who may log in: the AuthorizedKeysCommand, the webhook client, the bundled
webhook server with its key store, and the user/key admin commands.

Nothing in here imports `shim`; the dependency points the other way.
"""
