// Node-RED runtime settings for the peer flow of bench/compare.py.
// The bench starts Node-RED with its own userDir in a temp folder (flows.json and the
// generated flows_cred.json are copied there) and its own port:
//   node node_modules/node-red/red.js --settings settings.js --userDir DIR --port PORT
module.exports = {
    flowFile: "flows.json",
    // The bench writes the broker and InfluxDB passwords into DIR/flows_cred.json, in the
    // temp folder only; a real deployment sets a credentialSecret instead.
    credentialSecret: false,
    flowFilePretty: true,
    uiHost: "127.0.0.1",
    // A headless runtime: no editor, no palette installs, no projects.
    disableEditor: true,
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
    editorTheme: { projects: { enabled: false } },
    // Reconnect to the broker after 1 s (default 5 s), like smartcity ingest's minimum backoff.
    mqttReconnectTime: 1000,
    logging: {
        // info: the lines the bench waits for ("Started flows", "Connected to broker").
        console: { level: "info", metrics: false, audit: false },
    },
    // Keep telemetry and update checks off: the bench runs offline.
    diagnostics: { enabled: false, ui: false },
    telemetry: { enabled: false },
};
