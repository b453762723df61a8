-- The address at which the leader serves the API, for standbys to pass requests on.
ALTER TABLE leader ADD COLUMN url TEXT NOT NULL DEFAULT '';
