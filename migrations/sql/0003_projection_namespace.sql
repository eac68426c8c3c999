-- The topic namespace a projection's view serves (CHOREO_TOPIC_NAMESPACE; '' for none).
-- A view, its checkpoints, rebuild lock and dead-letter rows are named by the projection
-- alone, so two namespaces sharing a database would apply into one view: a runner, rebuild
-- or reset under another namespace than the one recorded here is refused. NULL: not yet
-- claimed (a projection registered before this column, or by `setup` without Kafka
-- settings); the first runner claims it.
ALTER TABLE choreo_meta.projections ADD COLUMN namespace text;
