// Writes the ACLs of the secure dev broker (scripts/dev-services up --secure) in one admin
// call. Run with the broker's jars on the class path:
//   java -cp "$KAFKA_HOME/libs/*" SecureAcls.java ADMIN_PROPERTIES USER=PREFIX...
// Each USER may, on resources whose names start with PREFIX: read, write, create and describe
// (configs too) topics; read (so join, commit and fetch offsets of) groups; use transactional
// ids; plus idempotent writes on the cluster. Nothing else: no other topic, group or id.
// Creating an ACL that exists is a no-op, so running it twice is harmless.

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class SecureAcls {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: SecureAcls ADMIN_PROPERTIES USER=PREFIX...");
            System.exit(2);
        }
        Properties admin = new Properties();
        try (var reader = Files.newBufferedReader(Path.of(args[0]))) {
            admin.load(reader);
        }
        List<AclBinding> acls = new ArrayList<>();
        for (int i = 1; i < args.length; i++) {
            String[] pair = args[i].split("=", 2);
            String principal = "User:" + pair[0];
            String prefix = pair[1];
            allow(acls, ResourceType.TOPIC, prefix, principal, AclOperation.READ,
                  AclOperation.WRITE, AclOperation.CREATE, AclOperation.DESCRIBE,
                  AclOperation.DESCRIBE_CONFIGS);
            allow(acls, ResourceType.GROUP, prefix, principal, AclOperation.READ,
                  AclOperation.DESCRIBE);
            allow(acls, ResourceType.TRANSACTIONAL_ID, prefix, principal, AclOperation.WRITE,
                  AclOperation.DESCRIBE);
            acls.add(new AclBinding(
                new ResourcePattern(ResourceType.CLUSTER, "kafka-cluster", PatternType.LITERAL),
                new AccessControlEntry(principal, "*", AclOperation.IDEMPOTENT_WRITE,
                                       AclPermissionType.ALLOW)));
        }
        try (Admin client = Admin.create(admin)) {
            client.createAcls(acls).all().get(60, TimeUnit.SECONDS);
        }
        System.out.println("ACLs written: " + acls.size());
    }

    private static void allow(List<AclBinding> acls, ResourceType type, String prefix,
                              String principal, AclOperation... operations) {
        for (AclOperation operation : operations) {
            acls.add(new AclBinding(
                new ResourcePattern(type, prefix, PatternType.PREFIXED),
                new AccessControlEntry(principal, "*", operation, AclPermissionType.ALLOW)));
        }
    }
}
