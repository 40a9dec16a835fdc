/*
 * co2logd example: an ESP8266 or ESP32 sending one reading by UDP and by
 * HTTP POST, authenticated with co2logserver's salted MD5 header.
 *
 *   CO2LOGSERVER_CHECKSUM_SALTS = ["my-super-secret-psk"]
 *   CO2LOGSERVER_UPLOAD_REQUIRES_AUTH = True
 *   CO2LOGSERVER_UDP_ACK = True          # for the UDP retry below
 *   CO2LOGSERVER_SEQUENCE_FIELD = "seq"  # retries are not stored twice
 *
 *   twistd -n co2logd --config co2logd.conf --udp 8125
 *
 * Content-MD5-Salted = hex(md5(payload bytes + salt)), over the exact body.
 * UDP datagram: header lines, an empty line, the body (one datagram = one
 * upload).  With UDP_ACK the server answers {"saved-in-db":1,"seq":N} or
 * {"error":...}; without an answer in time the same datagram is sent again.
 */

#if defined(ESP8266)
#include <ESP8266WiFi.h>
#include <ESP8266HTTPClient.h>
#else
#include <WiFi.h>
#include <HTTPClient.h>
#endif
#include <WiFiUdp.h>
#include <MD5Builder.h>

const char *WIFI_SSID = "your-ssid";
const char *WIFI_PASSWORD = "your-password";
const char *SERVER = "192.168.1.10";      // the machine running co2logd
const uint16_t UDP_PORT = 8125;           // --udp 8125
const uint16_t HTTP_PORT = 8080;          // --http tcp:8080 (the default)
const char *SALT = "my-super-secret-psk"; // one of CHECKSUM_SALTS
const char *BOX = "esp-livingroom";
const unsigned long INTERVAL_MS = 60000;

WiFiUDP udp;
unsigned long seq = 0;

String saltedMd5(const String &payload) {
  MD5Builder md5;
  md5.begin();
  md5.add(payload + SALT);
  md5.calculate();
  return md5.toString();  // lowercase hex
}

float readCo2Ppm() {
  return 400.0 + random(0, 600);  // replace with your sensor library
}

bool sendUdp(const String &body) {
  String datagram = String("Content-Type: application/json\r\n") +
                    "Content-MD5-Salted: " + saltedMd5(body) + "\r\n" +
                    "\r\n" + body;
  for (int attempt = 0; attempt < 3; attempt++) {
    udp.beginPacket(SERVER, UDP_PORT);
    udp.write((const uint8_t *)datagram.c_str(), datagram.length());
    udp.endPacket();
    unsigned long start = millis();
    while (millis() - start < 1000) {  // wait up to 1 s for the ack
      int size = udp.parsePacket();
      if (size > 0) {
        char reply[256];
        int n = udp.read(reply, sizeof(reply) - 1);
        reply[n < 0 ? 0 : n] = 0;
        Serial.printf("UDP ack: %s\n", reply);
        return strstr(reply, "\"saved-in-db\"") != NULL;
      }
      delay(10);
    }
  }
  return false;
}

bool sendHttp(const String &body) {
  WiFiClient client;
  HTTPClient http;
  String url = String("http://") + SERVER + ":" + HTTP_PORT + "/upload";
  http.begin(client, url);
  http.addHeader("Content-Type", "application/json");
  http.addHeader("Content-MD5-Salted", saltedMd5(body));
  int status = http.POST(body);
  Serial.printf("HTTP %d: %s\n", status, http.getString().c_str());
  http.end();
  return status == 200;
}

void setup() {
  Serial.begin(115200);
  WiFi.mode(WIFI_STA);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  while (WiFi.status() != WL_CONNECTED) {
    delay(500);
    Serial.print('.');
  }
  Serial.printf("\nconnected, IP %s\n", WiFi.localIP().toString().c_str());
  udp.begin(0);  // any local port; the ack comes back to it
  seq = random(1, 1000000);  // a fresh start is not mistaken for a retry
}

void loop() {
  // one row: {"box":"esp-livingroom","seq":17,"scd30_co2_ppm":640.0}
  String body = String("{\"box\":\"") + BOX + "\",\"seq\":" + seq +
                ",\"scd30_co2_ppm\":" + String(readCo2Ppm(), 1) + "}";
  seq++;
  if (!sendUdp(body)) {
    Serial.println("no UDP ack; sending by HTTP instead");
    // HTTP does not suppress duplicates: if only the UDP ack was lost,
    // the reading is stored twice (the seq column shows it)
    sendHttp(body);
  }
  delay(INTERVAL_MS);
}
