//! chaserfs workspace service (accounts, names, sessions, snapshots) and its HTTP layer.
//! Built on the engine in `chaserfs-fs`; see the project issues for its planned scope.
