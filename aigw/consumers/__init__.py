"""Who is calling: consumers, their keys and groups (Kong's ``key-auth`` and ``acl``).

Consumer files in conf.d become one `ConsumerIndex` per route table (a digest
-> consumer map, built at load); the ``key_auth`` and ``acl`` chain stages
read the index of the table their request started on.
"""
