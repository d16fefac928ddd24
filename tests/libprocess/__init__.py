"""libprocess's own test suite (apache/mesos 3rdparty/libprocess/src/tests), ported to libproc."""
