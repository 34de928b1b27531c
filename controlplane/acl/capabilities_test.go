package acl

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// schemaMethods yields every method of every service in the drover.v1
// schema, by procedure path.
func schemaMethods(t *testing.T) map[string]protoreflect.MethodDescriptor {
	t.Helper()
	_ = droverv1.File_drover_v1_acl_proto // registers the schema's files
	out := make(map[string]protoreflect.MethodDescriptor)
	protoregistry.GlobalFiles.RangeFilesByPackage("drover.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			svc := fd.Services().Get(i)
			for j := range svc.Methods().Len() {
				m := svc.Methods().Get(j)
				out["/"+string(svc.FullName())+"/"+string(m.Name())] = m
			}
		}
		return true
	})
	if len(out) == 0 {
		t.Fatal("found no services in package drover.v1")
	}
	return out
}

// TestEveryMethodDeclaresACapability is what makes access control hold by
// construction: a method added to the schema without a line in the table
// fails here before it can be served unchecked.
func TestEveryMethodDeclaresACapability(t *testing.T) {
	methods := schemaMethods(t)
	for path, m := range methods {
		c, ok := ForProcedure(path)
		if !ok {
			t.Errorf("%s has no capability in the table in capabilities.go: declare what it needs", path)
			continue
		}
		if c.Auth == AuthToken {
			if _, ok := resources[c.Resource]; !ok {
				t.Errorf("%s needs unknown resource %v", path, c.Resource)
			}
			if c.Access != read && c.Access != write {
				t.Errorf("%s needs access %s; a call needs read or write", path, AccessName(c.Access))
			}
		} else if c.Object != nil {
			t.Errorf("%s names an object but is not checked against a token's rules", path)
		}
		if c.Object != nil && (m.IsStreamingClient() || m.IsStreamingServer()) {
			t.Errorf("%s is a streaming call: its request is not read when it is authorized, so it cannot name an object", path)
		}
		// A call that changes nothing must not demand write, or read-only
		// tokens could not use it; the reverse is allowed (snapshots).
		if isRead(m) && c.Access == write && c.Auth == AuthToken {
			t.Errorf("%s has no side effects but needs write", path)
		}
	}
	for path := range procedures {
		if _, ok := methods[path]; !ok {
			t.Errorf("the table declares %s, which the schema does not have", path)
		}
	}
}

func isRead(m protoreflect.MethodDescriptor) bool {
	opts, ok := m.Options().(*descriptorpb.MethodOptions)
	return ok && opts.GetIdempotencyLevel() == descriptorpb.MethodOptions_NO_SIDE_EFFECTS
}

// fillStrings sets every singular string field of m, and of its singular
// message fields down to depth levels (a deployment's name is in its
// spec), to "probe".
func fillStrings(m protoreflect.Message, depth int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		switch {
		case f.IsList() || f.IsMap():
		case f.Kind() == protoreflect.StringKind:
			m.Set(f, protoreflect.ValueOfString("probe"))
		case f.Kind() == protoreflect.MessageKind && depth > 0:
			fillStrings(m.Mutable(f).Message(), depth-1)
		}
	}
}

// TestObjectsComeFromTheRequest checks that each call's object function
// reads the call's own request type: with every string field of the
// request filled in, it must name an object.
func TestObjectsComeFromTheRequest(t *testing.T) {
	for path, m := range schemaMethods(t) {
		c, _ := ForProcedure(path)
		if c.Object == nil {
			continue
		}
		mt, err := protoregistry.GlobalTypes.FindMessageByName(m.Input().FullName())
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		req := mt.New()
		fillStrings(req, 2)
		if ref := c.Object(req.Interface()); ref == (Ref{}) {
			t.Errorf("%s: the object function names nothing for a filled-in %s; does it take the right request type?", path, m.Input().FullName())
		}
	}
}
