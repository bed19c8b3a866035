/*
 * smartcity_clientid: a client id belongs to the account that owns its namespace.
 *
 * Mosquitto lets any authenticated client connect with any client id and takes
 * over (or, with clean start, destroys) the session of whoever had it. With this
 * plugin a vendor account may only use the client id `<account>` or
 * `<account>-<anything>` (and the broker-assigned `auto-...` ids); the platform's
 * own accounts, listed in `plugin_opt_trusted`, may use any id. A vendor can
 * therefore never take over ingest's session or another vendor's.
 *
 *   plugin /path/to/smartcity_clientid.so
 *   plugin_opt_trusted admin ingest
 *
 * It only refuses: a client it lets through still needs the password file.
 * Build: cc -shared -fPIC -O2 -o smartcity_clientid.so smartcity_clientid.c
 * (headers from Debian's mosquitto-dev and libmosquitto-dev; plugin API v5, Mosquitto >= 2.0).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define AUTO_ID_PREFIX "auto-"

static mosquitto_plugin_id_t *plugin_id = NULL;
static char *trusted = NULL; /* " admin ingest ": space-delimited on both sides */

static int is_trusted(const char *username)
{
	char needle[256];
	if(trusted == NULL || strlen(username) + 3 > sizeof(needle)) return 0;
	snprintf(needle, sizeof(needle), " %s ", username);
	return strstr(trusted, needle) != NULL;
}

static int owns(const char *username, const char *client_id)
{
	size_t n = strlen(username);
	if(strncmp(client_id, AUTO_ID_PREFIX, strlen(AUTO_ID_PREFIX)) == 0) return 1;
	return strncmp(client_id, username, n) == 0 && (client_id[n] == '\0' || client_id[n] == '-');
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	(void)event;
	(void)userdata;

	if(ed->username == NULL || client_id == NULL) return MOSQ_ERR_PLUGIN_DEFER; /* the password file refuses */
	if(is_trusted(ed->username) || owns(ed->username, client_id)) return MOSQ_ERR_PLUGIN_DEFER;
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"smartcity_clientid: refused client id '%s' for user '%s' (allowed: '%s' or '%s-...')",
			client_id, ed->username, ed->username, ed->username);
	return MOSQ_ERR_AUTH;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **user_data, struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	plugin_id = identifier;
	for(int i = 0; i < opt_count; i++){
		if(strcmp(opts[i].key, "trusted") == 0){
			size_t len = strlen(opts[i].value) + 3;
			free(trusted);
			trusted = malloc(len);
			if(trusted == NULL) return MOSQ_ERR_NOMEM;
			snprintf(trusted, len, " %s ", opts[i].value);
		}
	}
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *user_data, struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	(void)opts;
	(void)opt_count;
	free(trusted);
	trusted = NULL;
	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
}
