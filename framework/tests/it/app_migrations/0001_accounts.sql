-- An application's own first migration: same version number as choreo's first, other content.
CREATE TABLE accounts (id uuid PRIMARY KEY, owner text NOT NULL);
