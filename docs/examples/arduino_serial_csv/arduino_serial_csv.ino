/*
 * co2logd example: an Arduino printing measurements as lines over USB serial.
 *
 *   twistd -n co2logd --serial /dev/serial/by-id/usb-Arduino...-if00:9600
 *
 * CSV mode (default): a header line once in setup(), then one row per
 * measurement.  co2logd reads a line whose cells are all column names as the
 * header and every following line with as many cells as a row of it.  The
 * board resets when co2logd opens the port, so the header is printed again.
 *
 * Define USE_JSON to print one JSON object per line instead.
 *
 * Lines starting with '#' are comments: co2logd counts and ignores them.
 * Column names follow the OpenSenseMap convention type_quantity_unit
 * (e.g. scd30_co2_ppm) if you forward data to the OpenSenseMap.
 */

// #define USE_JSON

const unsigned long INTERVAL_MS = 10000;
const int CO2_PIN = A0;   // stand-in: an analog CO2 sensor (e.g. MG-811 board)
const int TEMP_PIN = A1;  // stand-in: a TMP36

unsigned long counter = 0;

float readCo2Ppm() {
  // Replace with your sensor library (SCD30, MH-Z19, SenseAir S8, ...).
  return analogRead(CO2_PIN) * (5000.0 / 1023.0);
}

float readTemperatureC() {
  float volts = analogRead(TEMP_PIN) * (5.0 / 1023.0);
  return (volts - 0.5) * 100.0;
}

void setup() {
  Serial.begin(9600);
  while (!Serial) {
    ;  // Leonardo/Micro: wait for the USB serial port
  }
  Serial.println(F("# co2logd example sketch starting"));
#ifndef USE_JSON
  // the CSV header: column names only, at least two of them
  Serial.println(F("uptime_s,scd30_co2_ppm,tmp36_temperature_c"));
#endif
}

void loop() {
  float co2 = readCo2Ppm();
  float temperature = readTemperatureC();
  unsigned long uptime = millis() / 1000;

#ifdef USE_JSON
  // {"uptime_s":12,"scd30_co2_ppm":640.5,"tmp36_temperature_c":21.3,"seq":3}
  Serial.print(F("{\"uptime_s\":"));
  Serial.print(uptime);
  Serial.print(F(",\"scd30_co2_ppm\":"));
  Serial.print(co2, 1);
  Serial.print(F(",\"tmp36_temperature_c\":"));
  Serial.print(temperature, 2);
  Serial.print(F(",\"seq\":"));
  Serial.print(counter);
  Serial.println(F("}"));
#else
  // 12,640.5,21.30  (a number in every row keeps it from looking like a header)
  Serial.print(uptime);
  Serial.print(',');
  Serial.print(co2, 1);
  Serial.print(',');
  Serial.println(temperature, 2);
#endif

  counter++;
  delay(INTERVAL_MS);
}
