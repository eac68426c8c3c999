package dev.choreo.interop;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.cloudevents.CloudEvent;
import io.cloudevents.CloudEventData;
import io.cloudevents.core.builder.CloudEventBuilder;
import io.cloudevents.core.message.Encoding;
import io.cloudevents.jackson.JsonFormat;
import io.cloudevents.kafka.CloudEventSerializer;
import io.cloudevents.kafka.KafkaMessageFactory;
import java.net.URI;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.OffsetDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * CloudEvents interop program (Java): the CloudEvents Java SDK's Kafka binding
 * (io.cloudevents:cloudevents-kafka, JSON format from cloudevents-json-jackson) on the Apache
 * Kafka client. choreo's integration tests (framework/tests/it/interop.rs) run it.
 *
 * <pre>
 * produce --topic T [--mode binary|structured] [--key K] --id ID --source S --type T
 *         [--subject S] [--time RFC3339] [--datacontenttype CT] [--ext NAME=VALUE]...
 *         [--data JSON] [--data-base64]
 *     writes one event with CloudEventSerializer (binary or structured encoding)
 * consume --topic T --count N [--timeout SECONDS]
 *     reads N records from the beginning (read_committed), turns each into a CloudEvent with
 *     KafkaMessageFactory.createReader(record).toEvent() and prints one JSON line per event:
 *     {"sdk","mode","topic","partition","offset","key","attributes":{...},"data","data_base64"}
 * </pre>
 *
 * Both take {@code --brokers} (default: $CHOREO_KAFKA_BROKERS or 127.0.0.1:9092).
 */
public final class Interop {
    private static final ObjectMapper JSON = new ObjectMapper();

    private Interop() {}

    public static void main(String[] argv) {
        try {
            if (argv.length == 0) {
                throw new Usage("a command: produce or consume");
            }
            Args args = Args.parse(argv, 1);
            switch (argv[0]) {
                case "produce" -> produce(args);
                case "consume" -> consume(args);
                default -> throw new Usage("unknown command " + argv[0]);
            }
        } catch (Usage e) {
            System.err.println("cloudevents-interop: " + e.getMessage());
            System.exit(2);
        } catch (Exception e) {
            System.err.println("cloudevents-interop: " + e);
            e.printStackTrace(System.err);
            System.exit(1);
        }
    }

    // ------------------------------------------------------------------------- produce

    private static void produce(Args args) throws Exception {
        String topic = args.required("topic");
        String mode = args.one("mode", "binary");
        CloudEventBuilder builder = CloudEventBuilder.v1()
            .withId(args.required("id"))
            .withSource(URI.create(args.required("source")))
            .withType(args.required("type"));
        String subject = args.one("subject", null);
        if (subject != null) {
            builder.withSubject(subject);
        }
        String time = args.one("time", null);
        if (time != null) {
            builder.withTime(OffsetDateTime.parse(time));
        }
        String contentType = args.one("datacontenttype", null);
        if (contentType != null) {
            builder.withDataContentType(contentType);
        }
        for (String extension : args.all("ext")) {
            int eq = extension.indexOf('=');
            if (eq <= 0) {
                throw new Usage("--ext wants NAME=VALUE, got " + extension);
            }
            builder.withExtension(extension.substring(0, eq), extension.substring(eq + 1));
        }
        String data = args.one("data", null);
        if (data != null) {
            JSON.readTree(data); // must be JSON
            builder.withData(data.getBytes(StandardCharsets.UTF_8));
        }
        CloudEvent event = builder.build();

        Map<String, Object> config = new HashMap<>();
        config.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args.brokers());
        config.put(ProducerConfig.ACKS_CONFIG, "all");
        config.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
        config.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        config.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, CloudEventSerializer.class);
        switch (mode) {
            case "binary" -> config.put(CloudEventSerializer.ENCODING_CONFIG, Encoding.BINARY);
            case "structured" -> {
                config.put(CloudEventSerializer.ENCODING_CONFIG, Encoding.STRUCTURED);
                JsonFormat format = new JsonFormat();
                if (args.flag("data-base64")) {
                    format = format.withForceJsonDataToBase64();
                }
                config.put(CloudEventSerializer.EVENT_FORMAT_CONFIG, format);
            }
            default -> throw new Usage("--mode is binary or structured, not " + mode);
        }
        try (KafkaProducer<String, CloudEvent> producer = new KafkaProducer<>(config)) {
            RecordMetadata sent = producer
                .send(new ProducerRecord<>(topic, args.one("key", null), event))
                .get(30, TimeUnit.SECONDS);
            ObjectNode line = JSON.createObjectNode();
            line.put("sdk", "java");
            line.put("mode", mode);
            line.put("topic", topic);
            line.put("partition", sent.partition());
            line.put("offset", sent.offset());
            line.put("id", event.getId());
            System.out.println(JSON.writeValueAsString(line));
        }
    }

    // ------------------------------------------------------------------------- consume

    private static void consume(Args args) throws Exception {
        String topic = args.required("topic");
        int count = Integer.parseInt(args.required("count"));
        double timeout = Double.parseDouble(args.one("timeout", "60"));
        Map<String, Object> config = new HashMap<>();
        config.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, args.brokers());
        config.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        config.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        config.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        config.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
        config.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        long deadline = System.nanoTime() + (long) (timeout * 1e9);
        try (KafkaConsumer<String, byte[]> consumer = new KafkaConsumer<>(config)) {
            List<PartitionInfo> infos = consumer.partitionsFor(topic, Duration.ofSeconds(10));
            if (infos == null || infos.isEmpty()) {
                throw new IllegalStateException("topic " + topic + " not found");
            }
            List<TopicPartition> partitions = new ArrayList<>();
            for (PartitionInfo info : infos) {
                partitions.add(new TopicPartition(topic, info.partition()));
            }
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);
            int seen = 0;
            while (seen < count) {
                if (System.nanoTime() > deadline) {
                    throw new IllegalStateException(
                        "read " + seen + " of " + count + " records of " + topic + " in " + timeout + " s");
                }
                for (ConsumerRecord<String, byte[]> record : consumer.poll(Duration.ofMillis(200))) {
                    if (seen == count) {
                        break;
                    }
                    CloudEvent event = KafkaMessageFactory.createReader(record).toEvent();
                    System.out.println(JSON.writeValueAsString(line(record, event)));
                    System.out.flush();
                    seen++;
                }
            }
        }
    }

    private static ObjectNode line(ConsumerRecord<String, byte[]> record, CloudEvent event) throws Exception {
        ObjectNode line = JSON.createObjectNode();
        line.put("sdk", "java");
        Header contentType = record.headers().lastHeader("content-type");
        boolean structured = contentType != null
            && new String(contentType.value(), StandardCharsets.UTF_8).trim().toLowerCase(Locale.ROOT)
                .startsWith("application/cloudevents");
        line.put("mode", structured ? "structured" : "binary");
        line.put("topic", record.topic());
        line.put("partition", record.partition());
        line.put("offset", record.offset());
        line.put("key", record.key());
        Map<String, Object> attributes = new LinkedHashMap<>();
        attributes.put("specversion", event.getSpecVersion().toString());
        attributes.put("id", event.getId());
        attributes.put("source", event.getSource().toString());
        attributes.put("type", event.getType());
        if (event.getSubject() != null) {
            attributes.put("subject", event.getSubject());
        }
        if (event.getTime() != null) {
            attributes.put("time", DateTimeFormatter.ISO_OFFSET_DATE_TIME.format(event.getTime()));
        }
        if (event.getDataContentType() != null) {
            attributes.put("datacontenttype", event.getDataContentType());
        }
        if (event.getDataSchema() != null) {
            attributes.put("dataschema", event.getDataSchema().toString());
        }
        for (String name : event.getExtensionNames()) {
            Object value = event.getExtension(name);
            if (value instanceof byte[] bytes) {
                attributes.put(name, Base64.getEncoder().encodeToString(bytes));
            } else if (value instanceof OffsetDateTime t) {
                attributes.put(name, DateTimeFormatter.ISO_OFFSET_DATE_TIME.format(t));
            } else if (value instanceof Integer || value instanceof Boolean) {
                attributes.put(name, value);
            } else {
                attributes.put(name, String.valueOf(value));
            }
        }
        line.set("attributes", JSON.valueToTree(attributes));
        CloudEventData data = event.getData();
        if (data == null) {
            line.putNull("data");
        } else {
            byte[] bytes = data.toBytes();
            String type = event.getDataContentType();
            JsonNode parsed = null;
            if (type == null || type.toLowerCase(Locale.ROOT).contains("json")) {
                try {
                    parsed = JSON.readTree(bytes);
                } catch (Exception notJson) {
                    parsed = null;
                }
            }
            if (parsed != null) {
                line.set("data", parsed);
            } else {
                String text = utf8(bytes);
                if (text != null) {
                    line.put("data", text);
                } else {
                    line.putNull("data");
                    line.put("data_base64", Base64.getEncoder().encodeToString(bytes));
                }
            }
        }
        return line;
    }

    private static String utf8(byte[] bytes) {
        try {
            return StandardCharsets.UTF_8.newDecoder().decode(ByteBuffer.wrap(bytes)).toString();
        } catch (CharacterCodingException e) {
            return null;
        }
    }

    // ------------------------------------------------------------------------- arguments

    private static final class Usage extends Exception {
        Usage(String message) {
            super(message);
        }
    }

    /** {@code --name value} options (repeatable) and {@code --flag}s. */
    private static final class Args {
        private static final List<String> FLAGS = List.of("data-base64");
        private final Map<String, List<String>> values = new HashMap<>();

        static Args parse(String[] argv, int from) throws Usage {
            Args args = new Args();
            for (int i = from; i < argv.length; i++) {
                String arg = argv[i];
                if (!arg.startsWith("--")) {
                    throw new Usage("unexpected argument " + arg);
                }
                String name = arg.substring(2);
                String value;
                if (FLAGS.contains(name)) {
                    value = "true";
                } else if (i + 1 < argv.length) {
                    value = argv[++i];
                } else {
                    throw new Usage(arg + " wants a value");
                }
                args.values.computeIfAbsent(name, k -> new ArrayList<>()).add(value);
            }
            return args;
        }

        String required(String name) throws Usage {
            String value = one(name, null);
            if (value == null) {
                throw new Usage("--" + name + " is required");
            }
            return value;
        }

        String one(String name, String fallback) {
            List<String> list = values.get(name);
            return list == null ? fallback : list.get(list.size() - 1);
        }

        List<String> all(String name) {
            return values.getOrDefault(name, List.of());
        }

        boolean flag(String name) {
            return values.containsKey(name);
        }

        String brokers() {
            String env = System.getenv("CHOREO_KAFKA_BROKERS");
            return one("brokers", env == null || env.isEmpty() ? "127.0.0.1:9092" : env);
        }
    }
}
