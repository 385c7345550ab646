-- Which installation of skylaunch this database belongs to. Its id is tagged on every cloud
-- resource the installation creates, so the orphan sweeper of one installation never judges
-- another's (a staging and a production install may share one AWS account or Azure
-- subscription). One row, made by the first process to start on the database.
CREATE TABLE installation (
    singleton  BIGINT PRIMARY KEY CHECK (singleton = 1),
    id         TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
